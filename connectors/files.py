"""File exports replayed as sources: JSONL, CSV and Parquet.

Positions are ``line N`` for JSONL and CSV (1-based, as an editor shows them)
and ``row N`` for Parquet. Blank JSONL lines carry no record and are skipped.

CSV cells are text. Column names with dots build nested objects
(``segment.channel`` becomes ``{"segment": {"channel": ...}}``), a cell that
holds a JSON object or array is decoded, and an empty cell is absent. A CSV
line ends at ``\n``, ``\r\n`` or a lone ``\r``; a record with a cell longer than
131,072 characters (the csv module's limit) is a dead letter.
"""

from __future__ import annotations

import csv
import enum
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from connectors.base import RawRecord, Source
from shadow.core.errors import ConfigError, SourceError


class FileFormat(enum.StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


_SUFFIXES = {
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
    ".json": FileFormat.JSONL,
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
}


def detect_format(path: Path) -> FileFormat:
    """The format named by the file's suffix.

    Raises:
        ConfigError: the suffix is not one of the known ones.
    """
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(_SUFFIXES))
        raise ConfigError(
            f"{path}: cannot tell the file format from its suffix; expected one of {known}"
        ) from None


class FileSource(Source):
    """Reads one file from start to end; bounded."""

    def __init__(self, path: str | Path, *, file_format: FileFormat | None = None) -> None:
        self.path = Path(path)
        self.format = file_format or detect_format(self.path)
        self.name = str(self.path)
        self._records: Iterator[RawRecord] | None = None
        self._handle: IO[Any] | None = None
        self._exhausted = False
        self._size = 0
        self._rows_read = 0
        self._rows_total = 0

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def fraction_done(self) -> float | None:
        if self._exhausted:
            return 1.0
        if self.format is FileFormat.PARQUET:
            return self._rows_read / self._rows_total if self._rows_total else None
        if self._handle is None or not self._size:
            return None
        binary = getattr(self._handle, "buffer", self._handle)
        return min(1.0, binary.tell() / self._size)

    def _open(self) -> None:
        try:
            self._size = self.path.stat().st_size
            if self.format is FileFormat.PARQUET:
                self._records = self._parquet_records()
            elif self.format is FileFormat.CSV:
                self._handle = self.path.open("rb")
                self._records = self._csv_records(self._handle)
            else:
                self._handle = self.path.open("rb")
                self._records = self._jsonl_records(self._handle)
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from exc

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def _poll(self, max_records: int) -> list[RawRecord]:
        assert self._records is not None
        batch: list[RawRecord] = []
        append = batch.append
        try:
            for record in self._records:
                append(record)
                if len(batch) >= max_records:
                    break
            else:
                self._exhausted = True
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"cannot read {self.path}: {exc}") from exc
        return batch

    def _jsonl_records(self, handle: IO[bytes]) -> Iterator[RawRecord]:
        source, loads = self.name, orjson.loads
        first = handle.readline()
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:]  # a byte-order mark, as some Windows exports write
        for number, line in enumerate(itertools.chain((first,), handle), 1):
            try:
                value = loads(line)
            except orjson.JSONDecodeError as exc:
                if not line or line.isspace():
                    continue  # a blank line, or a file holding nothing but a byte-order mark
                yield RawRecord(source, f"line {number}", None, line, f"not valid JSON: {exc}")
                continue
            if type(value) is dict:
                yield RawRecord(source, f"line {number}", value, line)
            else:
                reason = f"expected a JSON object, got {_json_type(value)}"
                yield RawRecord(source, f"line {number}", None, line, reason)

    def _csv_records(self, handle: IO[bytes]) -> Iterator[RawRecord]:
        """Records as the header names their cells; a record that cannot be read is a dead
        letter with its line, and the records around it are read as usual.

        A quoted cell may span lines, so a record is read line by line until its quotes
        close; one that does not close within :data:`MAX_RECORD_LINES` lines (an
        unbalanced quote) costs its first line only, and reading goes on from the next.
        """
        lines = _Lines(handle)
        header: list[str] | None = None
        while (first := lines.next()) is not None:
            number, record, problem = self._csv_record(first, lines)
            position = f"line {number}"
            if problem is not None:
                if header is None:
                    raise SourceError(f"cannot read {self.path}: the header ({position}): "
                                      f"{problem}")
                yield RawRecord(self.name, position, None, first[1], problem)
                continue
            if not record:
                continue  # a blank line
            if header is None:
                header = record
                continue
            row = dict(zip(header, record, strict=False))
            if len(record) > len(header):
                raw = {**row, "(cells past the header)": record[len(header):]}
                reason = f"row has more cells than the header's {len(header)}"
                yield RawRecord(self.name, position, None, raw, reason)
                continue
            yield RawRecord(self.name, position, _unflatten(row), row)

    def _csv_record(self, first: tuple[int, bytes], lines: _Lines,
                    ) -> tuple[int, list[str] | None, str | None]:
        """The record starting at ``first``: its line, its cells, or why it cannot be read."""
        number, data = first
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return number, None, f"not valid UTF-8: {exc.reason} at byte {exc.start}"
        taken: list[tuple[int, bytes]] = []
        while True:
            try:
                rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
            except csv.Error as exc:
                if "unexpected end of data" not in str(exc):
                    lines.again(taken)
                    return number, None, f"not valid CSV: {exc}"
                more = lines.next() if len(taken) + 1 < MAX_RECORD_LINES else None
                continued = _utf8(more[1]) if more is not None else None
                if more is None or continued is None:
                    lines.again([*taken, *([more] if more is not None else [])])
                    return number, None, ("unbalanced quote: no closing quote within "
                                          f"{len(taken) + 1} lines")
                taken.append(more)
                text += continued
                continue
            return number, rows[0] if rows else [], None

    def _parquet_records(self) -> Iterator[RawRecord]:
        import pyarrow.parquet as pq  # only Parquet replays pay for the import

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise SourceError(f"cannot read {self.path} as Parquet: {exc}") from exc
        number = 0
        self._rows_total = parquet.metadata.num_rows
        for batch in parquet.iter_batches(batch_size=10_000):
            self._rows_read += batch.num_rows
            for row in _json_friendly(batch).to_pylist():
                number += 1
                yield RawRecord(self.name, f"row {number}", row, row)


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


MAX_RECORD_LINES = 1000
"""How many lines one CSV record may span (a quoted cell with line breaks in it)."""


class _Lines:
    """A file's lines with their 1-based numbers, a byte-order mark dropped, and a way to
    hand lines back to be read again.

    A line ends at ``\n``, ``\r\n`` or a lone ``\r``, as the csv module ends its rows:
    read as one line, a file with classic Mac line endings would be one record (its
    header) and every row after it lost.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._numbered = enumerate(_csv_lines(handle), 1)
        self._again: list[tuple[int, bytes]] = []

    def next(self) -> tuple[int, bytes] | None:
        if self._again:
            return self._again.pop()
        found = next(self._numbered, None)
        if found is not None and found[0] == 1 and found[1].startswith(b"\xef\xbb\xbf"):
            return 1, found[1][3:]
        return found

    def again(self, lines: list[tuple[int, bytes]]) -> None:
        self._again.extend(reversed(lines))


_AFTER_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _csv_lines(handle: IO[bytes]) -> Iterator[bytes]:
    for line in handle:
        first_cr = line.find(b"\r")
        if first_cr == -1 or line[first_cr:] == b"\r\n":
            yield line
        else:
            yield from filter(None, _AFTER_LONE_CR.split(line))


def _json_friendly(batch: Any) -> Any:
    """Decimals as doubles, inside structs and lists too: JSON has numbers, not decimals,
    and the store keeps payloads as JSON (a row with a ``Decimal`` could not be stored)."""
    import pyarrow as pa

    def plain(kind: Any) -> Any:
        if pa.types.is_decimal(kind):
            return pa.float64()
        if pa.types.is_struct(kind):
            return pa.struct([f.with_type(plain(f.type)) for f in kind])
        if pa.types.is_list(kind):
            return pa.list_(kind.value_field.with_type(plain(kind.value_type)))
        if pa.types.is_large_list(kind):
            return pa.large_list(kind.value_field.with_type(plain(kind.value_type)))
        return kind

    columns = [column if plain(column.type) == column.type else column.cast(plain(column.type))
               for column in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _unflatten(row: dict[str, str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for column, cell in row.items():
        if cell == "":
            continue
        value: Any = cell
        if cell[0] in "[{":
            try:
                value = orjson.loads(cell)
            except orjson.JSONDecodeError:
                pass
        *parents, leaf = column.split(".")
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return nested


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
