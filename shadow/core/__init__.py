"""The bottom layer: the record types, errors, paths into payloads, templates, redaction,
durations, fixed-sample statistics, structured logs and the retry policy of every outbound
call. Imports nothing of the project."""
