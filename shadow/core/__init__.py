"""The bottom layer: the record types, errors, paths into payloads, templates, redaction,
durations and fixed-sample statistics. Imports nothing of the project."""
