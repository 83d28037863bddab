"""The configuration file: its model, one module per section, and loading it with errors
that name the key. Imports shadow.core and the connectors' specs."""
