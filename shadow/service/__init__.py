"""The daemon beside production: its loop, scheduled jobs, the control API with its
tokens, client and OpenAPI document, metrics and logs. Imports the reports and everything
below them."""
