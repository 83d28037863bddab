"""File exports as sources: JSONL, CSV and Parquet."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.base import RawRecord
from connectors.files import FileFormat, FileSource, detect_format
from shadow.core.errors import ConfigError, SourceError


def read_all(path: Path, batch: int = 1000) -> list[RawRecord]:
    records: list[RawRecord] = []
    with FileSource(path) as source:
        while chunk := source.poll(batch):
            records.extend(chunk)
        assert source.exhausted
    return records


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


# -- formats -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tickets.jsonl", FileFormat.JSONL),
        ("tickets.ndjson", FileFormat.JSONL),
        ("tickets.json", FileFormat.JSONL),
        ("TICKETS.JSONL", FileFormat.JSONL),
        ("resolutions.csv", FileFormat.CSV),
        ("tickets.parquet", FileFormat.PARQUET),
        ("tickets.pq", FileFormat.PARQUET),
    ],
)
def test_format_is_detected_from_suffix(name: str, expected: FileFormat) -> None:
    assert detect_format(Path(name)) is expected


@pytest.mark.parametrize("name", ["tickets.xlsx", "tickets", "tickets.jsonl.gz"])
def test_unknown_suffix_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot tell the file format.*\.csv"):
        FileSource(name)


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", '{"a": 1}\n')

    records = []
    with FileSource(path, file_format=FileFormat.JSONL) as source:
        records = source.poll(10)

    assert [r.value for r in records] == [{"a": 1}]


def test_constructor_does_no_io(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "not-yet-written.jsonl")

    assert source.name == str(tmp_path / "not-yet-written.jsonl")
    assert source.fraction_done() is None


def test_missing_file_fails_on_open(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "gone.jsonl")

    with pytest.raises(SourceError, match="cannot read .*gone.jsonl"):
        source.open()


# -- JSONL -------------------------------------------------------------------


def test_jsonl_reads_objects_with_one_based_line_positions(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"id": 1}\n{"id": 2, "via": {"channel": "email"}}\n')

    records = read_all(path)

    assert [(r.position, r.value) for r in records] == [
        ("line 1", {"id": 1}),
        ("line 2", {"id": 2, "via": {"channel": "email"}}),
    ]
    assert all(r.source == str(path) and r.error is None for r in records)
    assert records[0].raw == b'{"id": 1}\n'


def test_jsonl_skips_blank_lines_but_keeps_counting_them(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '\n{"id": 1}\n   \n\t\r\n{"id": 2}\r\n\n')

    records = read_all(path)

    assert [(r.position, r.value) for r in records] == [
        ("line 2", {"id": 1}), ("line 5", {"id": 2}),
    ]


def test_jsonl_last_line_without_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"id": 1}\n{"id": 2}')

    assert [r.value for r in read_all(path)] == [{"id": 1}, {"id": 2}]


def test_jsonl_invalid_json_is_a_record_with_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"id": 1}\n{"ticket": {"id": 48239, "created_at": "2024-\n')

    bad = read_all(path)[1]

    assert bad.position == "line 2"
    assert bad.value is None
    assert bad.error is not None and bad.error.startswith("not valid JSON")
    assert bad.raw_text() == '{"ticket": {"id": 48239, "created_at": "2024-'


def test_jsonl_invalid_utf8_is_a_record_with_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", b'{"name": "M\xfcller"}\n{"id": 2}\n')

    records = read_all(path)

    assert records[0].value is None and records[0].error is not None
    assert records[1].value == {"id": 2}


@pytest.mark.parametrize(
    ("line", "kind"),
    [("[1, 2]", "an array"), ('"text"', "a string"), ("42", "a number"), ("4.5", "a number"),
     ("true", "a boolean"), ("null", "null")],
)
def test_jsonl_non_object_line_is_a_record_with_an_error(
    tmp_path: Path, line: str, kind: str
) -> None:
    path = write(tmp_path, "t.jsonl", f'{{"id": 1}}\n{line}\n')

    record = read_all(path)[1]

    assert (record.position, record.value) == ("line 2", None)
    assert record.error == f"expected a JSON object, got {kind}"


def test_jsonl_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path) -> None:
    # Windows tools (PowerShell's Out-File, Excel's "UTF-8" export) write a BOM;
    # the CSV reader already strips it with utf-8-sig.
    path = write(tmp_path, "t.jsonl", b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n')

    records = read_all(path)

    assert [(r.position, r.value, r.error) for r in records] == [
        ("line 1", {"id": 1}, None),
        ("line 2", {"id": 2}, None),
    ]


def test_jsonl_poll_returns_at_most_max_records(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", "".join(f'{{"id": {i}}}\n' for i in range(5)))

    with FileSource(path) as source:
        sizes = [len(source.poll(2)) for _ in range(4)]
        assert source.exhausted

    assert sizes == [2, 2, 1, 0]


# -- CSV ---------------------------------------------------------------------

RESOLUTIONS = (
    "ticket_id,resolution.category,resolution.macro,solved_at,agent_email,tags\n"
    "48213,account_access,Account unlocked,2024-05-06 16:10:02,jan.s@support.example.com,"
    '"[""a"", ""b""]"\n'
    "48222,billing,,2024-05-08 13:44:20,,\n"
)


def test_csv_dotted_columns_become_nested_objects(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", RESOLUTIONS)

    first = read_all(path)[0]

    assert first.value == {
        "ticket_id": "48213",
        "resolution": {"category": "account_access", "macro": "Account unlocked"},
        "solved_at": "2024-05-06 16:10:02",
        "agent_email": "jan.s@support.example.com",
        "tags": ["a", "b"],
    }


def test_csv_empty_cells_are_absent(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", RESOLUTIONS)

    second = read_all(path)[1]

    assert second.value == {
        "ticket_id": "48222",
        "resolution": {"category": "billing"},
        "solved_at": "2024-05-08 13:44:20",
    }


def test_csv_json_object_cells_are_decoded_and_other_text_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.csv",
        'id,outcome,note,count\n1,"{""category"": ""bug"", ""urgent"": true}",[not json,42\n',
    )

    record = read_all(path)[0]

    assert record.value == {
        "id": "1",
        "outcome": {"category": "bug", "urgent": True},
        "note": "[not json",
        "count": "42",
    }


def test_csv_positions_are_one_based_lines_after_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "id,category\n1,billing\n\n2,bug\r\n3,shipping")

    records = read_all(path)

    assert [(r.position, r.value) for r in records] == [
        ("line 2", {"id": "1", "category": "billing"}),
        ("line 4", {"id": "2", "category": "bug"}),
        ("line 5", {"id": "3", "category": "shipping"}),
    ]


def test_csv_position_of_a_multiline_cell_is_the_line_the_record_starts_on(
    tmp_path: Path,
) -> None:
    # Ticket descriptions in CSV exports routinely hold line breaks; an editor
    # shows record 2 starting on line 3.
    path = write(tmp_path, "r.csv", 'id,description\n1,"Hello,\nsecond line"\n2,short\n')

    records = read_all(path)

    assert records[0].value == {"id": "1", "description": "Hello,\nsecond line"}
    assert [r.position for r in records] == ["line 2", "line 4"]


def test_csv_row_with_too_many_cells_is_an_error_record(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "id,category\n1,billing\n2,bug,extra,more\n3,shipping\n")

    records = read_all(path)

    bad = records[1]
    assert (bad.position, bad.value) == ("line 3", None)
    assert bad.error == "row has more cells than the header's 2"
    assert "extra" in bad.raw_text()
    assert [r.value for r in (records[0], records[2])] == [
        {"id": "1", "category": "billing"}, {"id": "3", "category": "shipping"},
    ]


def test_csv_row_with_too_few_cells_leaves_the_rest_absent(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "id,category,agent\n1\n")

    assert read_all(path)[0].value == {"id": "1"}


def test_csv_byte_order_mark_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b"\xef\xbb\xbfticket_id,category\n1,bug\n")

    assert read_all(path)[0].value == {"ticket_id": "1", "category": "bug"}


def test_csv_raw_is_the_row_as_read(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", RESOLUTIONS)

    raw = read_all(path)[1].raw

    assert raw == {"ticket_id": "48222", "resolution.category": "billing", "resolution.macro": "",
                   "solved_at": "2024-05-08 13:44:20", "agent_email": "", "tags": ""}


def bad_and_good(records: list[RawRecord]) -> tuple[dict[str, str], list[str]]:
    """Dead letters by position with their reason, and the ids of the records read."""
    bad = {r.position: r.error or "" for r in records if r.value is None}
    good = [str(r.value["id"]) for r in records if r.value is not None]
    return bad, good


def test_a_csv_line_that_is_not_utf8_is_an_error_record_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "r.csv", b"id,name\n1,Anna\n2,M" + "ü".encode("latin-1")
                 + b"ller\n3,Chen\n")
    bad, good = bad_and_good(read_all(path))
    assert good == ["1", "3"]
    assert list(bad) == ["line 3"] and "not valid UTF-8" in bad["line 3"]


def test_an_unbalanced_quote_costs_its_line_only(tmp_path: Path) -> None:
    rows = [f"{i},fine" for i in range(1, 100)]
    rows.insert(1, '2b,"never closed')
    path = write(tmp_path, "r.csv", "id,name\n" + "\n".join(rows) + "\n")
    bad, good = bad_and_good(read_all(path))
    assert good == [str(i) for i in range(1, 100)]  # the 98 rows after it are all read
    assert list(bad) == ["line 3"] and "unbalanced quote" in bad["line 3"]


def test_a_quoted_cell_may_still_span_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", 'id,name\n1,"two\nlines"\n2,"a ""quoted"" word"\n')
    values = [r.value for r in read_all(path)]
    assert values == [{"id": "1", "name": "two\nlines"}, {"id": "2", "name": 'a "quoted" word'}]


def test_a_cell_over_the_field_limit_is_an_error_record(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", f"id,name\n1,{'x' * 200_000}\n2,short\n")
    bad, good = bad_and_good(read_all(path))
    assert good == ["2"]
    assert list(bad) == ["line 2"] and "field larger than field limit" in bad["line 2"]


def test_a_malformed_quote_is_an_error_record(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", 'id,name\n1,"x"y\n2,fine\n')
    bad, good = bad_and_good(read_all(path))
    assert good == ["2"] and "not valid CSV" in bad["line 2"]


def test_a_header_that_cannot_be_read_is_a_source_error(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b"id,n\xe4me\n1,x\n")
    with FileSource(path) as source, pytest.raises(SourceError, match="the header"):
        source.poll(10)


# -- Parquet -----------------------------------------------------------------


def _write_parquet(path: Path) -> Path:
    table = pa.table({
        "id": pa.array([48201, 48202, 48203], pa.int64()),
        "created_at": pa.array(
            [datetime(2024, 5, 6, 7, tzinfo=UTC), datetime(2024, 5, 6, 8, tzinfo=UTC), None],
            pa.timestamp("us", tz="UTC"),
        ),
        "via": pa.array(
            [{"channel": "email"}, {"channel": "web"}, {"channel": None}],
            pa.struct([("channel", pa.string())]),
        ),
        "tags": pa.array([["a"], [], ["b", "c"]], pa.list_(pa.string())),
    })
    pq.write_table(table, path, row_group_size=2)
    return path


def test_parquet_rows_with_nested_structs_and_row_positions(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "t.parquet")

    records = read_all(path)

    assert [r.position for r in records] == ["row 1", "row 2", "row 3"]
    assert records[0].value == {
        "id": 48201, "created_at": datetime(2024, 5, 6, 7, tzinfo=UTC),
        "via": {"channel": "email"}, "tags": ["a"],
    }
    assert records[2].value is not None and records[2].value["via"] == {"channel": None}
    assert '"channel":"web"' in records[1].raw_text()


def test_parquet_fraction_done_counts_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": pa.array(range(25_000), pa.int64())}), path)
    fractions: list[float | None] = []

    with FileSource(path) as source:
        assert source.fraction_done() is None
        while batch := source.poll(5_000):
            fractions.append(source.fraction_done())
            last = batch[-1]
        assert source.exhausted
        assert source.fraction_done() == 1.0

    assert last.position == "row 25000" and last.value == {"id": 24_999}
    assert fractions[0] is not None and 0 < fractions[0] < 1
    assert fractions == sorted(fractions)  # type: ignore[type-var]


def test_file_that_is_not_parquet_is_a_source_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.parquet", "id,category\n1,bug\n")

    with FileSource(path) as source, pytest.raises(SourceError, match="as Parquet"):
        source.poll(10)


# -- lifecycle ---------------------------------------------------------------


def test_poll_before_open_is_refused(tmp_path: Path) -> None:
    source = FileSource(write(tmp_path, "t.jsonl", '{"id": 1}\n'))

    with pytest.raises(RuntimeError, match="it is new"):
        source.poll(10)


def test_closed_source_cannot_be_polled(tmp_path: Path) -> None:
    source = FileSource(write(tmp_path, "t.jsonl", '{"id": 1}\n'))
    with source:
        source.poll(1)

    with pytest.raises(RuntimeError, match="cannot poll .* it is closed"):
        source.poll(10)


def test_closed_source_cannot_be_reopened(tmp_path: Path) -> None:
    source = FileSource(write(tmp_path, "t.jsonl", '{"id": 1}\n'))
    source.open()
    source.close()

    with pytest.raises(RuntimeError, match="cannot open .* it is closed"):
        source.open()


def test_open_source_cannot_be_opened_twice(tmp_path: Path) -> None:
    source = FileSource(write(tmp_path, "t.jsonl", '{"id": 1}\n'))
    with source, pytest.raises(RuntimeError, match="it is open"):
        source.open()


def test_close_is_idempotent_and_works_before_open(tmp_path: Path) -> None:
    source = FileSource(write(tmp_path, "t.jsonl", '{"id": 1}\n'))
    source.close()
    source.close()

    with pytest.raises(RuntimeError):
        source.open()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("t.jsonl", "".join(f'{{"id": {i}, "text": "{"x" * 50}"}}\n' for i in range(2000))),
        ("t.csv", "id,text\n" + "".join(f"{i},{'x' * 50}\n" for i in range(2000))),
    ],
)
def test_fraction_done_grows_and_reaches_one_at_the_end(
    tmp_path: Path, name: str, data: str
) -> None:
    path = write(tmp_path, name, data)
    fractions: list[float | None] = []

    with FileSource(path) as source:
        while source.poll(100):
            fractions.append(source.fraction_done())
        assert source.exhausted
        final = source.fraction_done()

    assert final == 1.0
    assert all(f is not None and 0 < f <= 1 for f in fractions)
    assert fractions == sorted(fractions)  # type: ignore[type-var]
    assert fractions[0] is not None and fractions[0] < 1.0


def test_fraction_done_of_an_empty_file_is_one_when_exhausted(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", "")

    with FileSource(path) as source:
        assert source.poll(10) == []
        assert source.exhausted
        assert source.fraction_done() == 1.0
