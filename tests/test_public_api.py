"""The public API (``shadow/__init__.py``): every name resolves; importing it changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import shadow

_QUIET_IMPORT = """
import json, sys
before = list(sys.path)
import logging, structlog
import shadow
print(json.dumps({
    "structlog_configured": structlog.is_configured(),
    "root_handlers": len(logging.getLogger().handlers),
    "path_unchanged": sys.path == before,
    "loaded": sorted(m for m in sys.modules
                     if m.split(".")[0] in ("shadow", "rollout", "connectors")),
}))
"""


def test_importing_shadow_configures_nothing_and_loads_no_layer() -> None:
    out = subprocess.run([sys.executable, "-c", _QUIET_IMPORT], capture_output=True, text=True,
                         check=True)
    seen = json.loads(out.stdout)
    assert seen == {"structlog_configured": False, "root_handlers": 0, "path_unchanged": True,
                    "loaded": ["shadow"]}
    assert out.stderr == ""


def test_every_public_name_resolves_to_the_object_of_its_home_module() -> None:
    import importlib

    for name in shadow.__all__:
        value = getattr(shadow, name)
        home = importlib.import_module(value.__module__)
        assert getattr(home, name) is value, name
    assert sorted(shadow.__all__) == sorted(set(shadow.__all__))
    assert set(shadow.__all__) <= set(dir(shadow))


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        shadow.Replay  # noqa: B018
    except AttributeError as exc:
        assert "'Replay'" in str(exc)
    else:
        raise AssertionError("shadow.Replay resolved")


_LIBRARY_USE = """
import sys
from shadow import CallableCandidate, Pipeline, Store, build_comparator
from shadow.config.comparators import ExactSpec
from shadow.testing import ListSource

def crash(event):
    raise RuntimeError("no model here")

events = ListSource([{"event_id": "e1", "key": "k", "occurred_at": "2026-01-01T00:00:00Z",
                     "payload": {"x": 1}}], name="events")
with Store(sys.argv[1]) as store:
    summary = Pipeline(store, CallableCandidate(crash, name="c"),
                       build_comparator(ExactSpec())).run([events])
print(summary.events_stored, summary.prediction_errors)
"""


def test_a_pipeline_used_as_a_library_logs_to_stderr_not_into_its_output(tmp_path: Path) -> None:
    """structlog's own default prints every level to stdout; the pipeline asks for stderr."""
    out = subprocess.run([sys.executable, "-c", _LIBRARY_USE, str(tmp_path / "s.duckdb")],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "1 1\n"
    assert "prediction failed" in out.stderr and "no model here" in out.stderr
