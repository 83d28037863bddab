"""A deliberately slow JSON endpoint, for benchmarking the HTTP candidate.

    python bench/slow_endpoint.py [--port 0] [--delay 0.1]

A minimal HTTP/1.1 server on 127.0.0.1 built on ``asyncio.start_server`` alone
(keep-alive, ``Content-Length`` bodies, no chunked requests). Every POST is
answered after ``--delay`` seconds -- an ``asyncio.sleep``, so requests
overlap -- with ``{"category": "billing", "confidence": 0.9}``; any other
method gets 405. With ``--port 0`` a free port is picked; the first line on
stdout is always ``listening on PORT``.

On SIGTERM or SIGINT it prints one JSON line on stdout and exits::

    {"served": 3000, "max_in_flight": 64, "first_request_at": ..., "last_response_at": ...,
     "busy_s": 5.2}

``served`` counts answered POSTs, ``max_in_flight`` the most POSTs between
their request being read and their answer being written, and ``busy_s`` the
time from the first POST read to the last answer written (wall clock, s).
uvloop is used when it is importable (``--no-uvloop`` to refuse it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

ANSWER = b'{"category": "billing", "confidence": 0.9}'
MAX_HEADER = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


def _response(status: str, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class SlowEndpoint:
    """Counts what it serves; answers every POST after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.first_request_at: float | None = None
        self.last_response_at: float | None = None

    def stats(self) -> dict[str, object]:
        busy = None
        if self.first_request_at is not None and self.last_response_at is not None:
            busy = round(self.last_response_at - self.first_request_at, 6)
        return {"served": self.served, "max_in_flight": self.max_in_flight,
                "first_request_at": self.first_request_at,
                "last_response_at": self.last_response_at, "busy_s": busy}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed the connection between requests
                except asyncio.LimitOverrunError:
                    writer.write(_response("431 Request Header Fields Too Large", b"{}", False))
                    await writer.drain()
                    return
                keep_alive = await self._one(head, reader, writer)
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns whether the connection stays open."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method = parts[0].upper()
        version = parts[2] if len(parts) > 2 else "HTTP/1.0"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            writer.write(_response("411 Length Required", b"{}", False))
            await writer.drain()
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            writer.write(_response("400 Bad Request", b"{}", False))
            await writer.drain()
            return False
        if length:
            await reader.readexactly(length)
        if method != "POST":
            writer.write(_response("405 Method Not Allowed", b"{}", keep_alive))
            await writer.drain()
            return keep_alive

        now = time.time()
        if self.first_request_at is None:
            self.first_request_at = now
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            writer.write(_response("200 OK", ANSWER, keep_alive))
            await writer.drain()
        finally:
            self.in_flight -= 1
        self.served += 1
        self.last_response_at = time.time()
        return keep_alive


async def serve(port: int, delay: float) -> None:
    endpoint = SlowEndpoint(delay)
    server = await asyncio.start_server(endpoint.handle, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        # Printed before closing: with clients still connected, closing may wait on them.
        print(json.dumps(endpoint.stats()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    args = parser.parse_args()
    run = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            pass
        else:
            run = uvloop.run
    run(serve(args.port, args.delay))
    sys.exit(0)


if __name__ == "__main__":
    main()
