"""Free-text comparators: lexical similarity, embeddings, and an LLM judge on 127.0.0.1.

Every expected score below is worked out by hand in the test: the tokens, the
overlap or the longest common subsequence, then precision, recall and F.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import Comparator, Judgement, build_comparator
from shadow.compare.judge import Judge
from shadow.compare.step import MAX_CONSECUTIVE_DEFERRALS, compare
from shadow.compare.text import DEFAULT_RUBRIC, f1_score, rouge_l, tokens
from shadow.config.comparators import JudgeSpec
from shadow.config.file import parse_config
from shadow.core.errors import ConfigError
from shadow.core.models import Event
from shadow.pipeline.replay import describe
from shadow.pipeline.runner import Pipeline, ReplaySummary
from shadow.store.database import Store
from shadow.testing import ListSource
from tests.http_server import Reply, Request, TestServer

START = datetime(2024, 5, 1, tzinfo=UTC)


def comparator(**spec: Any) -> Comparator:
    return build_comparator(parse_config({"comparator": spec}).comparator)


# -- tokens ------------------------------------------------------------------


def test_tokens_are_case_folded_words_split_on_anything_else() -> None:
    assert tokens("The cat sat on the mat.") == ["the", "cat", "sat", "on", "the", "mat"]


def test_tokens_are_unicode_aware() -> None:
    # NFKC turns the ligature "ﬁ" into "fi"; casefold turns "ß" into "ss"; € is no word.
    assert tokens("Ça coûte 12,50 € — ﬁnal STRAßE") == [
        "ça", "coûte", "12", "50", "final", "strasse"]


# -- similarity: f1 ------------------------------------------------------------


def test_f1_counts_repeated_tokens_at_most_as_often_as_both_sides_have_them() -> None:
    prediction = tokens("The cat sat on the mat.")  # the cat sat on the mat: 6 tokens
    reference = tokens("A cat was on the mat")  # a cat was on the mat: 6 tokens
    # common bag: cat, on, the (once: the reference has one), mat = 4
    # precision 4/6, recall 4/6, F1 = 2/3
    assert f1_score(prediction, reference) == pytest.approx(2 / 3)


def test_f1_of_texts_of_different_lengths() -> None:
    prediction = tokens("We issued your refund today")  # we issued your refund today: 5
    reference = tokens("Your refund was issued")  # your refund was issued: 4
    # common: issued, your, refund = 3; precision 3/5, recall 3/4
    # F1 = 2 * 0.6 * 0.75 / (0.6 + 0.75) = 0.9 / 1.35 = 2/3
    assert f1_score(prediction, reference) == pytest.approx(2 / 3)


def test_f1_ignores_word_order() -> None:
    # same bag of five words: precision 5/5, recall 5/5
    assert f1_score(tokens("the refund was issued yesterday"),
                    tokens("yesterday the refund was issued")) == 1.0


def test_f1_with_no_common_token_is_zero() -> None:
    assert f1_score(["refund"], ["password"]) == 0.0


def test_empty_texts_score_one_together_and_zero_against_text() -> None:
    assert f1_score([], []) == rouge_l([], []) == 1.0
    assert f1_score([], ["a"]) == rouge_l(["a"], []) == 0.0


# -- similarity: rouge_l -------------------------------------------------------


def test_rouge_l_rewards_order_through_the_longest_common_subsequence() -> None:
    prediction = tokens("the refund was issued yesterday")  # 5 tokens
    reference = tokens("yesterday the refund was issued")  # 5 tokens
    # LCS: the refund was issued = 4; precision 4/5, recall 4/5, F = 0.8
    assert rouge_l(prediction, reference) == pytest.approx(0.8)


def test_rouge_l_of_texts_of_different_lengths() -> None:
    prediction = tokens("We issued your refund today")  # we issued your refund today: 5
    reference = tokens("Your refund was issued")  # your refund was issued: 4
    # "issued" comes before "your refund" in one and after it in the other, so the
    # LCS is "your refund" = 2; precision 2/5, recall 2/4
    # F = 2 * 0.4 * 0.5 / (0.4 + 0.5) = 0.4 / 0.9 = 4/9
    assert rouge_l(prediction, reference) == pytest.approx(4 / 9)


def test_rouge_l_is_symmetric_in_its_lcs() -> None:
    a, b = tokens("a b c d e f"), tokens("x b y d f")
    # LCS b d f = 3; precision 3/6, recall 3/5: F = 2 * 0.5 * 0.6 / 1.1 = 6/11
    assert rouge_l(a, b) == rouge_l(b, a) == pytest.approx(6 / 11)


# -- similarity: the comparator ------------------------------------------------


def test_similarity_agrees_at_or_above_the_threshold_and_notes_the_score() -> None:
    output, outcome = "the refund was issued yesterday", "yesterday the refund was issued"
    assert comparator(kind="similarity", metric="rouge_l", threshold=0.75).compare(
        output, outcome) == Judgement(True, {}, "rouge_l=0.800")
    assert comparator(kind="similarity", metric="rouge_l", threshold=0.85).compare(
        output, outcome) == Judgement(False, {}, "rouge_l=0.800")


def test_similarity_defaults_to_f1_with_threshold_one_half() -> None:
    judged = comparator(kind="similarity").compare("We issued your refund today",
                                                   "Your refund was issued")
    assert judged == Judgement(True, {}, "f1=0.667")


def test_similarity_reads_the_configured_paths() -> None:
    judged = comparator(kind="similarity", prediction_path="reply", outcome_path="text").compare(
        {"reply": "Refund issued."}, {"text": "refund ISSUED"})
    assert judged == Judgement(True, {}, "f1=1.000")


def test_similarity_disagrees_with_a_value_that_is_not_text() -> None:
    assert comparator(kind="similarity").compare(42, "42") == Judgement(
        False, {}, "prediction is not text: int")


def test_similarity_fingerprint_changes_with_the_metric() -> None:
    f1, rouge = comparator(kind="similarity"), comparator(kind="similarity", metric="rouge_l")
    assert f1.name.startswith("similarity:") and f1.name != rouge.name


def test_similarity_rejects_an_unknown_metric() -> None:
    with pytest.raises(ConfigError, match="comparator.metric"):
        comparator(kind="similarity", metric="bleu")


# -- semantic ------------------------------------------------------------------


def test_semantic_agrees_on_a_paraphrase_and_not_on_an_unrelated_text() -> None:
    semantic = comparator(kind="semantic", threshold=0.8)
    paraphrase = semantic.compare("Please reset your password via the link",
                                  "Use the link to reset the password")
    unrelated = semantic.compare("Please reset your password via the link",
                                 "Your parcel ships on Monday")
    assert paraphrase.agree and not unrelated.agree
    assert paraphrase.note is not None and paraphrase.note.startswith("cosine=")
    assert semantic.compare("Same words", "Same words").note == "cosine=1.000"


def test_semantic_fingerprint_changes_with_the_threshold() -> None:
    loose, strict = comparator(kind="semantic", threshold=0.5), comparator(kind="semantic")
    assert loose.name.startswith("semantic:") and loose.name != strict.name


def test_semantic_disagrees_with_an_empty_text_and_agrees_on_two() -> None:
    semantic = comparator(kind="semantic")
    assert semantic.compare("", "refund") == Judgement(False, {}, "cosine=0.000")
    assert semantic.compare(" ", "") == Judgement(True, {}, "cosine=1.000")


def test_semantic_model_loads_from_the_wheel_without_network_or_writing_files(
    tmp_path: Path,
) -> None:
    script = (
        "import socket\n"
        "def refuse(*a, **k): raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from shadow.compare.comparators import build_comparator\n"
        "from shadow.config.comparators import SemanticSpec\n"
        "c = build_comparator(SemanticSpec(kind='semantic'))\n"
        "print(c.compare('refund issued', 'the refund was issued').agree)\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert list(home.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_semantic_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)  # what an absent package looks like
    with pytest.raises(ConfigError, match=r"pip install 'shadow-rollout\[semantic\]'"):
        comparator(kind="semantic")


# -- judge ---------------------------------------------------------------------


def completion(content: str) -> Reply:
    return Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "model": "judge-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
    })


def judge_server(request: Request) -> Reply:
    """Agrees unless the prompt contains the word "wrong"."""
    prompt = request.json()["messages"][-1]["content"]
    if "wrong" in prompt:
        return completion(json.dumps({"verdict": "disagree", "reason": "a different answer"}))
    return completion(json.dumps({"verdict": "agree", "reason": "the same meaning"}))


@pytest.fixture
def server() -> Iterator[TestServer]:
    with TestServer(judge_server) as running:
        yield running


def judge_spec(server: TestServer, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"kind": "judge", "base_url": server.url + "/v1", "model": "judge-model",
            "cache_path": str(tmp_path / "judge.sqlite"), **overrides}


def judge_with_waits(spec: dict[str, Any], waits: list[float], **options: Any) -> Judge:
    """A judge whose waits between attempts are recorded in ``waits``, not slept."""
    parsed = parse_config({"comparator": spec}).comparator
    assert isinstance(parsed, JudgeSpec)
    return Judge(parsed, sleep=waits.append, **options)


def highest(low: float, high: float) -> float:
    return high


def test_judge_returns_the_verdict_and_its_reason(server: TestServer, tmp_path: Path) -> None:
    judge = comparator(**judge_spec(server, tmp_path))
    assert judge.compare("Refund issued", "refund issued") == Judgement(
        True, {}, "the same meaning")
    assert judge.compare("the wrong refund", "refund issued") == Judgement(
        False, {}, "a different answer")


def test_judge_sends_the_rubric_with_both_sides_and_asks_for_a_verdict_schema(
    server: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-judge")
    judge = comparator(**judge_spec(server, tmp_path, api_key_env="TEST_JUDGE_KEY"))
    judge.compare({"reply": "Refund issued"}, "refund issued")
    (request,) = server.requests
    body = request.json()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-judge"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["verdict"]["enum"] == ["agree", "disagree"]
    prompt = body["messages"][-1]["content"]
    assert prompt.startswith(DEFAULT_RUBRIC.split("\n")[0])
    assert 'AI output:\n{"reply":"Refund issued"}\n\nHuman outcome:\nrefund issued' in prompt


def test_a_custom_rubric_is_filled_from_output_and_outcome(
    server: TestServer, tmp_path: Path
) -> None:
    rubric = "Same ticket category? Draft: {{ output }} / Agent: {{ outcome }}"
    comparator(**judge_spec(server, tmp_path, rubric=rubric)).compare("billing", "Billing")
    assert server.requests[0].json()["messages"][-1]["content"] == (
        "Same ticket category? Draft: billing / Agent: Billing")


def test_a_rubric_with_an_unknown_placeholder_is_a_config_error(
    server: TestServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="judge rubric"):
        comparator(**judge_spec(server, tmp_path, rubric="Compare {{ payload.subject }}"))


def test_judge_accepts_a_verdict_in_plain_text_around_json(tmp_path: Path) -> None:
    text = 'Sure.\n```json\n{"verdict": "Disagree", "reason": "tone differs"}\n```'
    with TestServer(lambda request: completion(text)) as server:
        judged = comparator(**judge_spec(server, tmp_path)).compare("a", "b")
    assert judged == Judgement(False, {}, "tone differs")


def test_a_rerun_asks_the_judge_nothing(server: TestServer, tmp_path: Path) -> None:
    pairs = [("Refund issued", "refund issued"), ("the wrong refund", "refund issued"),
             ({"reply": "ok"}, {"reply": "ok"})]
    first = [comparator(**judge_spec(server, tmp_path)).compare(*pair) for pair in pairs]
    assert len(server.requests) == 3

    again = [comparator(**judge_spec(server, tmp_path)).compare(*pair) for pair in pairs]
    assert len(server.requests) == 3
    assert again == first


def test_a_different_rubric_asks_again_under_another_name(
    server: TestServer, tmp_path: Path
) -> None:
    default = comparator(**judge_spec(server, tmp_path))
    default.compare("Refund issued", "refund issued")
    rubric = "Strictly: {{ output }} {{ outcome }}"
    strict = comparator(**judge_spec(server, tmp_path, rubric=rubric))
    strict.compare("Refund issued", "refund issued")
    assert len(server.requests) == 2
    assert default.name != strict.name and strict.name.startswith("judge:")


def test_a_different_model_asks_again(server: TestServer, tmp_path: Path) -> None:
    comparator(**judge_spec(server, tmp_path)).compare("a", "b")
    comparator(**judge_spec(server, tmp_path, model="other-model")).compare("a", "b")
    assert [r.json()["model"] for r in server.requests] == ["judge-model", "other-model"]


def test_without_the_cache_every_comparison_asks(server: TestServer, tmp_path: Path) -> None:
    judge = comparator(**judge_spec(server, tmp_path, cache=False))
    judge.compare("a", "b")
    judge.compare("a", "b")
    assert len(server.requests) == 2
    assert not (tmp_path / "judge.sqlite").exists()


def test_a_failing_judge_defers_with_a_note_and_is_not_cached(tmp_path: Path) -> None:
    with TestServer(lambda request: Reply(status=400, body="bad request")) as server:
        judge = comparator(**judge_spec(server, tmp_path))
        with capture_logs() as logs:
            judged = judge.compare("a", "b")
        judge.compare("a", "b")
        assert len(server.requests) == 2  # one attempt each: a 400 is not retried
    assert judged.deferred and not judged.agree and judged.fields == {}
    assert judged.note is not None and judged.note.startswith("judge failed: ")
    assert "answered 400 (refused: check base_url, model and api_key_env)" in judged.note
    # no warning per item: the runner warns once per compare run
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []


def test_a_server_error_is_retried_after_a_jittered_backoff(tmp_path: Path) -> None:
    answers = iter([Reply(status=503), Reply(status=503),
                    completion('{"verdict": "agree", "reason": "ok"}')])
    waits: list[float] = []
    with TestServer(lambda request: next(answers)) as server:
        judge = judge_with_waits(judge_spec(server, tmp_path, max_attempts=3), waits,
                                 uniform=highest)
        judged = judge.compare("a", "a")
        assert len(server.requests) == 3
    assert judged == Judgement(True, {}, "ok")
    assert waits == [0.5, 1.0]  # the upper bounds of the jitter: 0.5 s, doubling


@pytest.mark.parametrize("status", [408, 429])
def test_a_timeout_or_rate_limit_answer_is_retried(tmp_path: Path, status: int) -> None:
    answers = iter([Reply(status=status, headers={"retry-after": "0"}),
                    completion('{"verdict": "disagree", "reason": "no"}')])
    waits: list[float] = []
    with TestServer(lambda request: next(answers)) as server:
        judge = judge_with_waits(judge_spec(server, tmp_path, max_attempts=2), waits)
        judged = judge.compare("a", "b")
        assert len(server.requests) == 2
    assert judged == Judgement(False, {}, "no")
    assert len(waits) == 1 and 0.0 <= waits[0] <= 0.5  # Retry-After 0: the backoff alone


def test_a_retry_after_as_an_http_date_is_waited_for(tmp_path: Path) -> None:
    busy = Reply(status=429, headers={
        "retry-after": format_datetime(START + timedelta(seconds=7), usegmt=True)})
    answers = iter([busy, completion('{"verdict": "agree", "reason": "ok"}')])
    waits: list[float] = []
    with TestServer(lambda request: next(answers)) as server:
        judge = judge_with_waits(judge_spec(server, tmp_path, max_attempts=2), waits,
                                 now=lambda: START)
        judged = judge.compare("a", "a")
        assert len(server.requests) == 2
    assert judged == Judgement(True, {}, "ok")
    assert waits == [7.0]


def test_a_retry_after_is_waited_for_at_most_a_minute(tmp_path: Path) -> None:
    answers = iter([Reply(status=503, headers={"retry-after": "3600"}),
                    completion('{"verdict": "agree", "reason": "ok"}')])
    waits: list[float] = []
    with TestServer(lambda request: next(answers)) as server:
        judge_with_waits(judge_spec(server, tmp_path, max_attempts=2), waits).compare("a", "a")
    assert waits == [60.0]


def test_a_reply_without_a_verdict_is_deferred(tmp_path: Path) -> None:
    reply = completion('{"verdict": "maybe", "reason": "unsure"}')
    with TestServer(lambda request: reply) as server, capture_logs():
        judged = comparator(**judge_spec(server, tmp_path)).compare("a", "b")
    assert judged.deferred and not judged.agree
    assert judged.note is not None and "no agree/disagree verdict" in judged.note


def test_an_unreachable_judge_defers_rather_than_raising(tmp_path: Path) -> None:
    with TestServer(judge_server) as server:
        url = server.url
    spec = {"kind": "judge", "base_url": url + "/v1", "model": "m", "max_attempts": 1,
            "cache_path": str(tmp_path / "judge.sqlite")}
    with capture_logs():
        judged = comparator(**spec).compare("a", "b")
    assert judged.deferred and judged.note is not None
    assert judged.note.startswith("judge failed: ")


def test_a_deferred_field_defers_the_whole_prediction(tmp_path: Path) -> None:
    with TestServer(lambda request: Reply(status=400)) as server:
        fields = comparator(kind="fields", fields={
            "category": {"kind": "exact"}, "reply": judge_spec(server, tmp_path)})
        with capture_logs():
            judged = fields.compare({"category": "billing", "reply": "a"},
                                    {"category": "bug", "reply": "b"})
    assert judged.deferred and judged.fields == {}
    assert judged.note is not None and judged.note.startswith("reply: judge failed: ")


def test_a_missing_api_key_variable_is_a_config_error(server: TestServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    judge = comparator(**judge_spec(server, tmp_path, api_key_env="NO_SUCH_JUDGE_KEY"))
    with pytest.raises(ConfigError, match="NO_SUCH_JUDGE_KEY"):
        judge.compare("a", "b")


# -- the real pipeline -----------------------------------------------------------


REPLIES = {
    0: ("Your refund was issued today", "We issued your refund today"),
    1: ("Reset your password with the link", "Use the link to reset your password"),
    2: ("Your parcel ships on Monday", "We cannot refund this order"),
}


def drafter(event: Event) -> dict[str, Any]:
    return {"reply": REPLIES[event.payload["i"]][0]}


def test_a_replay_compares_drafted_replies_by_similarity(tmp_path: Path) -> None:
    config = parse_config({"comparator": {
        "kind": "similarity", "metric": "f1", "threshold": 0.5, "prediction_path": "reply"}})
    events = [{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
               "payload": {"i": i}} for i in REPLIES]
    outcomes = [{"key": f"t{i}", "outcome": REPLIES[i][1], "decided_at": START.isoformat()}
                for i in REPLIES]
    # e0: your refund was issued today | we issued your refund today: common your refund
    #     issued today = 4 of 5 and 5: F1 0.8, agrees
    # e1: reset your password with the link (6) | use the link to reset your password (7):
    #     common reset your password the link = 5: P 5/6, R 5/7, F1 = 10/13 = 0.77, agrees
    # e2: your parcel ships on monday | we cannot refund this order: nothing common, 0
    judge = build_comparator(config.comparator)
    with Store(tmp_path / "s.duckdb") as store:
        with CallableCandidate(drafter, name="drafter", version="1") as candidate:
            summary = Pipeline(store, candidate, judge, now=lambda: START).run(
                [ListSource(events)], [ListSource(outcomes)])
        assert (summary.compared, summary.agreed) == (3, 2)
        rows = store.db.execute(
            "SELECT event_id, comparator, agree FROM comparisons ORDER BY event_id").fetchall()
        assert rows == [("e0", judge.name, True), ("e1", judge.name, True),
                        ("e2", judge.name, False)]
        rouge = build_comparator(parse_config({"comparator": {
            "kind": "similarity", "metric": "rouge_l", "threshold": 0.5,
            "prediction_path": "reply"}}).comparator)
        # e0 under ROUGE-L: LCS your refund today = 3 of 5 and 5: 0.6, agrees
        # e1: LCS reset your password = 3 (or the link = 2): P 3/6, R 3/7, F = 6/13, disagrees
        assert compare(store, rouge, now=lambda: START) == 3
        agreed = store.db.execute(
            "SELECT event_id FROM comparisons WHERE comparator = ? AND agree ORDER BY event_id",
            [rouge.name]).fetchall()
        assert agreed == [("e0",)]


def reply_inputs(replies: dict[int, tuple[str, str]]) -> tuple[ListSource, ListSource]:
    """Events whose payload is the drafted reply, and the reply the human sent."""
    events = [{"event_id": f"e{i}", "key": f"t{i}", "occurred_at": START.isoformat(),
               "payload": {"reply": draft}} for i, (draft, _) in replies.items()]
    outcomes = [{"key": f"t{i}", "outcome": sent, "decided_at": START.isoformat()}
                for i, (_, sent) in replies.items()]
    return ListSource(events), ListSource(outcomes)


def echo(event: Event) -> dict[str, Any]:
    return dict(event.payload)


def test_the_similarity_score_is_stored_as_the_comparisons_note(tmp_path: Path) -> None:
    similarity = comparator(kind="similarity", metric="f1", threshold=0.5,
                            prediction_path="reply")
    # F1 by hand, as in the replay test above: e0 4 common tokens of 5 and 5; e1 5 common
    # of 6 and 7; e2 nothing in common.
    f1 = {"e0": 0.8, "e1": 2 * (5 / 6) * (5 / 7) / (5 / 6 + 5 / 7), "e2": 0.0}
    with Store(tmp_path / "s.duckdb") as store:
        with CallableCandidate(echo, name="drafter", version="1") as candidate:
            events, outcomes = reply_inputs(REPLIES)
            Pipeline(store, candidate, similarity, now=lambda: START).run([events], [outcomes])
        notes = store.db.execute(
            "SELECT event_id, note FROM comparisons ORDER BY event_id").fetchall()
    assert notes == [("e0", "f1=0.800"), ("e1", "f1=0.769"), ("e2", "f1=0.000")]
    assert notes == [(event, f"f1={score:.3f}") for event, score in f1.items()]


class SwitchableJudge:
    """Answers 503 (retry at once) while ``down``, then like :func:`judge_server`."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, request: Request) -> Reply:
        if self.down:
            return Reply(status=503, body="overloaded", headers={"retry-after": "0"})
        return judge_server(request)


def test_a_judge_outage_leaves_predictions_pending_until_the_judge_answers(
    tmp_path: Path,
) -> None:
    replies = {i: (f"reply number {i}" + (" is wrong" if i % 3 == 0 else ""), f"reply {i}")
               for i in range(2 * MAX_CONSECUTIVE_DEFERRALS + 1)}
    expected = sorted(
        (f"e{i}", "wrong" not in draft,
         "the same meaning" if "wrong" not in draft else "a different answer")
        for i, (draft, _) in replies.items())
    switch = SwitchableJudge()
    with TestServer(switch) as server, Store(tmp_path / "s.duckdb") as store:
        judge = judge_with_waits(judge_spec(server, tmp_path, max_attempts=2,
                                            prediction_path="reply"), waits=[])
        with CallableCandidate(echo, name="drafter", version="1") as candidate, \
                capture_logs() as logs:
            events, outcomes = reply_inputs(replies)
            first = Pipeline(store, candidate, judge, now=lambda: START).run([events], [outcomes])

        # Two attempts for each of the first failures in a row, then no more calls.
        assert len(server.requests) == 2 * MAX_CONSECUTIVE_DEFERRALS
        assert (first.compared, first.agreed, first.deferred) == (0, 0, len(replies))
        assert f"not judged yet  {len(replies):>10,}" in describe(first)
        assert store.count("comparisons") == 0
        pending = [item for chunk in store.pending_comparisons(judge.name) for item in chunk]
        assert sorted(item.event_id for item in pending) == [e for e, _, _ in expected]
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [(w["event"], w["deferred"], w["compared"]) for w in warnings] == [
            ("comparisons deferred", len(replies), 0)]
        assert "answered 503 (after 2 attempt(s))" in warnings[0]["last_error"]

        switch.down = False
        second = ReplaySummary()
        with capture_logs() as logs:
            assert compare(store, judge, second, now=lambda: START) == len(replies)

        assert len(server.requests) == 2 * MAX_CONSECUTIVE_DEFERRALS + len(replies)
        assert (second.compared, second.deferred) == (len(replies), 0)
        assert second.agreed == sum(agree for _, agree, _ in expected)
        assert [entry for entry in logs if entry["log_level"] == "warning"] == []
        rows = store.db.execute(
            "SELECT event_id, agree, note FROM comparisons ORDER BY event_id").fetchall()
        assert rows == expected
        assert list(store.pending_comparisons(judge.name)) == []
