"""The ``shadow`` command and its subcommands. The top layer: may import every other."""
