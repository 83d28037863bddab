"""Making what was written survive a power loss."""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush ``path``, a file or a directory, to disk.

    A new file's name, or a rename, is durable only once its directory is
    flushed too, so callers flush both.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
