"""Where an IMAP source has got to, kept in a small JSON file of its own.

An IMAP server keeps no consumer offsets, and the shadow path never marks mail as
read, so the source records its progress itself: per folder, the ``UIDVALIDITY``
it read under, the last UID it handed out and, where the server has CONDSTORE, the
folder's ``HIGHESTMODSEQ`` up to which flag changes were read; and, for an outcome
source, what each thread's person has done so far (see :mod:`connectors.imap_threads`).
The file is written by :meth:`Positions.save` only when the pipeline commits (after
the store has committed the records), atomically: a temporary file, flushed, renamed
over the old one, the folder flushed. A crash leaves the previous positions, and the
records after them are read again and recognised by the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shadow.core.disk import fsync
from shadow.core.errors import SourceError

_VERSION = 1


@dataclass(frozen=True, slots=True)
class FolderPosition:
    """The last UID handed out of a folder, under the folder's ``UIDVALIDITY``."""

    uidvalidity: int
    uid: int
    modseq: int | None = None
    """Flag changes up to this mod-sequence were read (CONDSTORE); ``None`` when not
    known, as for a folder read again under a new ``UIDVALIDITY``."""


@dataclass(slots=True)
class Progress:
    folders: dict[str, FolderPosition]
    threads: dict[str, dict[str, Any]]
    """Per thread key, what the outcome source knows of it (empty for event sources)."""


class Positions:
    """The positions file of one source."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Progress:
        """The committed progress; nothing read yet when the file does not exist.

        Raises:
            SourceError: the file cannot be read or is not a positions file.
        """
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return Progress({}, {})
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SourceError(f"cannot read the IMAP positions in {self.path}: {exc}") from exc
        try:
            folders = {name: FolderPosition(int(p["uidvalidity"]), int(p["uid"]),
                                            _modseq(p.get("modseq")))
                       for name, p in data["folders"].items()}
            threads = dict(data.get("threads", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SourceError(f"{self.path} is not an IMAP positions file: {exc!r}") from exc
        return Progress(folders, threads)

    def save(self, progress: Progress) -> None:
        """Replace the file with ``progress``, durably.

        Raises:
            SourceError: the file cannot be written.
        """
        data = {"version": _VERSION,
                "folders": {name: {"uidvalidity": p.uidvalidity, "uid": p.uid,
                                   **({"modseq": p.modseq} if p.modseq is not None else {})}
                            for name, p in progress.folders.items()},
                "threads": progress.threads}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
            fsync(temporary)
            os.replace(temporary, self.path)
            fsync(self.path.parent)
        except OSError as exc:
            raise SourceError(f"cannot write the IMAP positions to {self.path}: {exc}") from exc


def _modseq(value: Any) -> int | None:
    return None if value is None else int(value)
