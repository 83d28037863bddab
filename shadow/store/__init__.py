"""The DuckDB store: its tables and migrations, idempotent writes, and online backups.
Imports shadow.core."""
