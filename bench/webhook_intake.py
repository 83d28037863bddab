"""Webhook intake of a running daemon: signed deliveries, each answered once stored.

    python bench/webhook_intake.py [--deliveries 2000] [--concurrency 50] [--dir bench/out]

Starts ``shadow run`` as a subprocess, with one Standard Webhooks endpoint, the
cheapest candidate (``trivial_candidate.py``) and a fresh store under
``--dir``. Deliveries are signed beforehand with the Standard Webhooks
reference library (``standardwebhooks``) and posted by an aiohttp client in
this process:

1. one sender, posting its deliveries one after another (``--sequential``
   of them), as many vendors do per subscription;
2. ``--concurrency`` senders at once, ``--deliveries`` in all.

Every answer must be 200 and, once the daemon has stopped, the store must hold
every delivery exactly once. The reference, measured the same way in the same
run, is a bare aiohttp server in a subprocess that answers 200 at once and
stores nothing: what the client, the HTTP stack and the machine allow.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import duckdb
import orjson
from standardwebhooks import Webhook

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from shadow.service.control import DaemonFile  # noqa: E402

TOKEN = "bench-token"
PATH = "/hooks/tickets"

BARE_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web

    async def answer(request):
        await request.read()
        return web.json_response({"status": "stored", "records": 1})

    app = web.Application()
    app.router.add_post("/hooks/tickets", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed(hooks: Webhook, start: int, n: int) -> list[tuple[bytes, dict[str, str]]]:
    at = datetime.now(UTC)
    deliveries = []
    for i in range(start, start + n):
        body = orjson.dumps({"event_id": f"e{i}", "key": f"k{i}",
                             "occurred_at": "2026-01-01T00:00:00Z",
                             "payload": {"subject": f"ticket {i}", "body": "x" * 200}})
        message = f"msg_{i}"
        deliveries.append((body, {"webhook-id": message,
                                  "webhook-timestamp": str(int(at.timestamp())),
                                  "webhook-signature": hooks.sign(message, at, body),
                                  "content-type": "application/json"}))
    return deliveries


async def post_all(url: str, deliveries: list[tuple[bytes, dict[str, str]]],
                   senders: int) -> tuple[float, list[float], list[int]]:
    """Seconds for all, each delivery's latency, and the statuses."""
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for delivery in deliveries:
        queue.put_nowait(delivery)
    latencies: list[float] = []
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def sender() -> None:
            while not queue.empty():
                body, headers = queue.get_nowait()
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        return time.perf_counter() - started, latencies, statuses


def measure(label: str, url: str, deliveries: list[tuple[bytes, dict[str, str]]],
            senders: int) -> float:
    seconds, latencies, statuses = asyncio.run(post_all(url, deliveries, senders))
    bad = [s for s in statuses if s != 200]
    assert not bad, f"{label}: {len(bad)} answers were not 200, e.g. {bad[:5]}"
    rate = len(deliveries) / seconds
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{label}: {len(deliveries):,} deliveries, {senders} sender(s): {rate:,.0f}/s "
          f"(p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms)")
    return rate


def start_daemon(directory: Path, secret: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = directory / "intake.yaml"
    config.write_text(textwrap.dedent(f"""
        candidate: {{callable: trivial_candidate:label, name: triage}}
        store: {{path: intake.duckdb}}
        sources:
          events:
            - {{kind: webhook, name: tickets, path: {PATH}, scheme: standard,
               secret_env: HOOK_SECRET}}
        daemon:
          api: {{port: 0}}
          webhooks: {{port: {port}}}
        """), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(SHADOW_API_TOKEN=TOKEN, HOOK_SECRET=secret,
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    log = (directory / "intake-daemon.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "shadow", "run", "--config", str(config)],
                               cwd=directory, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while DaemonFile.read(directory / "intake.duckdb") is None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit((directory / "intake-daemon.log").read_text())
        time.sleep(0.1)
    wait_listening(port)
    return process, f"http://127.0.0.1:{port}{PATH}"


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    directory = (args.dir / "webhook-intake").absolute()
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("intake.duckdb*"):
        leftover.unlink()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    hooks = Webhook(secret)
    one = signed(hooks, 0, args.sequential)
    many = signed(hooks, args.sequential, args.deliveries)

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        wait_listening(port)
        bare_url = f"http://127.0.0.1:{port}{PATH}"
        bare_one = measure("reference, bare aiohttp server", bare_url, one, 1)
        bare_many = measure("reference, bare aiohttp server", bare_url, many, args.concurrency)
    finally:
        bare.terminate()
        bare.wait(timeout=30)

    daemon, url = start_daemon(directory, secret)
    try:
        ours_one = measure("shadow run, stored before each answer", url, one, 1)
        ours_many = measure("shadow run, stored before each answer", url, many,
                            args.concurrency)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    assert daemon.returncode == 0, (directory / "intake-daemon.log").read_text()[-2000:]
    with duckdb.connect(str(directory / "intake.duckdb"), read_only=True) as db:
        row = db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    expected = args.sequential + args.deliveries
    assert row == (expected, expected), f"stored {row}, expected {expected} once each"
    print(f"command: python bench/webhook_intake.py --deliveries {args.deliveries} "
          f"--sequential {args.sequential} --concurrency {args.concurrency}")
    print(f"stored: {expected:,} deliveries, each once")
    print(f"ratio shadow run / bare server: sequential {ours_one / bare_one:.2f}, "
          f"{args.concurrency} senders {ours_many / bare_many:.2f}")


if __name__ == "__main__":
    main()
