"""``shadow demo``: generate the workload, replay it, report, and point at what matters."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from shadow.config.file import load_config
from shadow.demo.workload import generate
from shadow.pipeline.replay import ReplayRequest, describe, replay_files
from shadow.reports.build import FullReport, full_report, render_report
from shadow.reports.disagreements_csv import disagreements_path, write_disagreements_csv
from shadow.reports.verdict import percent
from shadow.store.database import Store

CONFIG = """\
# The configuration `shadow demo` used. Re-run the same replay (it adds nothing:
# replays are idempotent) from this directory with:
#   shadow replay events.jsonl --outcomes outcomes.jsonl --config shadow.yaml
version: 1
candidate:
  callable: shadow.demo.candidate:classify
  name: keyword-triage
  version: "0.3"
comparator:
  kind: normalized          # case and white space do not matter
  prediction_path: category # the candidate answers {"category": ..., "confidence": ...}
store:
  path: shadow.duckdb       # relative to this file
report:                     # what "ready" means to the owners
  threshold: 0.80           # the 95 % lower bound of agreement must reach it
  segment_floor: 0.70       # and no language, channel or tier may fall below this
  redact: [customer.name]   # never shown: not in the report, not in its CSV
"""

MIN_SEGMENT_SAMPLE = 30


def run_demo(directory: Path, *, events: int = 5000, progress: Any = None,
             program: str = "shadow", program_anywhere: str = "shadow") -> str:
    """Run the whole demo in ``directory`` and return what to tell the user. Its hints run
    ``program``, the command as the user invoked it, or ``program_anywhere`` (the same,
    found from any directory) where the hint changes directory first."""
    files = generate(directory, events=events)
    config = directory / "shadow.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    store_path = directory / "shadow.duckdb"
    for stale in (store_path, store_path.with_name(store_path.name + ".wal")):
        stale.unlink(missing_ok=True)  # the demo starts from a fresh store every time

    summary = replay_files(
        ReplayRequest(events=[files.events], outcomes=[files.outcomes], config=config),
        progress=progress,
    )
    with Store(store_path, read_only=True) as store:
        report = full_report(store, load_config(config))
        csv = disagreements_path(directory / "report.html")
        disagreements = write_disagreements_csv(store, report.owner.options, csv)
    for name, fmt in (("report.json", "json"), ("report.md", "markdown"),
                      ("report.html", "html")):
        (directory / name).write_text(render_report(report, fmt, csv_href=csv.name),
                                      encoding="utf-8")

    return "\n".join([
        describe(summary),
        "",
        render_report(report, "table").rstrip(),
        "",
        f"Files in {directory}/:",
        f"  events.jsonl    {files.events_written:,} ticket events, {files.malformed_lines} "
        f"malformed lines and {files.duplicate_lines} duplicates among them",
        f"  outcomes.jsonl  {files.outcomes_written:,} human decisions; "
        f"{files.keys_with_changed_outcome} tickets re-categorised later "
        f"({files.keys_recategorised_by_another} of them by another agent), "
        f"{files.keys_reviewed} reviewed and confirmed by a second agent, "
        f"{files.keys_without_outcome} still open",
        "  shadow.yaml     the configuration used",
        "  shadow.duckdb   the store: events, predictions, outcomes, comparisons, dead letters",
        "  report.html     the owners' report: verdict, charts, disagreements, cost "
        "(open it in a browser)",
        f"  {csv.name}  every disagreement ({disagreements:,}), private fields redacted",
        "  report.md       the verdict and key numbers in Markdown; report.json all of it",
        "",
        "What to look at:",
        *_findings(report, directory, program, program_anywhere),
    ]) + "\n"


def _findings(report: FullReport, directory: Path, program: str,
              program_anywhere: str) -> list[str]:
    candidate = report.core.candidates[0]
    overall = candidate.agreement.rate
    segments = [s for s in candidate.segments if s.compared >= MIN_SEGMENT_SAMPLE]
    worst = min(segments, key=lambda s: s.agreement.rate or 0.0)
    findings = [
        f"  - Overall agreement is {percent(overall)}, but {worst.field}="
        f"{worst.value} agrees only {percent(worst.agreement.rate)}: "
        "an average hides the segment the candidate fails (it knows no German keywords).",
    ]
    baseline = report.owner.human_baseline
    if baseline and baseline.pairs:
        # The same pairs as the files' counts: a review confirms, a re-categorisation by
        # another agent disagrees (one by the agent who filed it is no second opinion).
        findings.append(
            f"  - When a second agent revisited a ticket ({baseline.pairs:,} times: "
            f"{baseline.agreed:,} reviews that confirmed the label and "
            f"{baseline.pairs - baseline.agreed:,} re-categorisations by another agent), the "
            f"two agreed {percent(baseline.rate)} of the time. People disagree too: that is "
            "the bar to hold the candidate to.")
    return findings + [
        f"  - {candidate.pending:,} predictions are pending: their tickets have no human "
        "outcome yet. They are compared when the outcome arrives.",
        f"  - {report.core.dead_letters} malformed lines were kept, not dropped, with the reason: "
        f"{program} dead-letters --db {shlex.quote(str(directory / 'shadow.duckdb'))}",
        f"  - Re-run it: cd {shlex.quote(str(directory))} && {program_anywhere} replay "
        "events.jsonl --outcomes outcomes.jsonl "
        "--config shadow.yaml  (nothing changes: replays are idempotent)",
    ]
