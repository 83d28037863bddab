"""Comparing a prediction with the human outcome: structured and text comparators, the
LLM judge, the compare step that records verdicts, and calibration against people.
Imports shadow.core, shadow.config, shadow.store and shadow.candidates."""
