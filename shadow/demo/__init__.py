"""The ``shadow demo`` workload: support tickets, their human outcomes and a sample candidate.

``generate(directory)`` writes ``events.jsonl`` and ``outcomes.jsonl``;
``shadow.demo.candidate:classify`` is an intentionally imperfect candidate to run on them.
"""

from __future__ import annotations

from shadow.demo.texts import CATEGORIES
from shadow.demo.workload import DemoFiles, generate

__all__ = ["CATEGORIES", "DemoFiles", "generate"]
