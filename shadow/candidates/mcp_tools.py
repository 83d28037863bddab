"""Tools from a real MCP server, and the only way a shadow run may run one.

A :class:`McpToolset` connects to a server over stdio (``server`` is a command, a list
of arguments) or streamable HTTP (``server`` is an ``http(s)://`` URL) with the official
``mcp`` SDK (the ``agents`` extra). ``tools/list`` gives each tool's name, description,
input schema and ``readOnlyHint`` annotation.

The toolset has no public way to call a tool. A shadow run gets a
:class:`ShadowExecutor` from :meth:`McpToolset.executor`, built from an allowlist: one
runner per listed tool that the server offers and does not mark as writing
(``readOnlyHint: false``); a listed tool the server marks so is refused, with the reason
kept in ``refused``. The executor holds nothing else, so a run has no path to any other
tool::

    with McpToolset(["python", "crm_server.py"]) as toolset:
        executor = toolset.executor(["get_customer"], timeout=5.0)
        executor.run("get_customer", {"customer_id": "c1"})

The SDK is asynchronous; the toolset keeps one session open on an event loop of its own
thread between ``open`` and ``close``, so candidates call it synchronously.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from shadow.core.errors import ConfigError, ShadowError, first_line

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult

MAX_RESULT = 8_192
"""How many characters of a tool's result (as JSON) are kept and fed back."""
_GRACE = 2.0
"""How much longer than a call's timeout the caller waits for the loop to give up on it."""


class ToolsetError(ShadowError):
    """The MCP server cannot be reached or listed, or the toolset is used out of order."""


class ToolsetState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool as the server lists it."""

    name: str
    description: str | None = None
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    read_only: bool | None = None
    """The server's ``readOnlyHint``; None when it does not say."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one executed call returned: a JSON value, or an error, never both."""

    output: Any = None
    error: str | None = None
    latency_ms: float = 0.0


ToolRunner = Callable[[Mapping[str, Any]], ToolResult]


class ShadowExecutor:
    """Runs the tools it was built with, and no other.

    ``run`` never raises for what a tool does: an error, a timeout or a lost connection
    is a :class:`ToolResult` with ``error``.
    """

    def __init__(self, runners: Mapping[str, ToolRunner],
                 refused: Mapping[str, str] | None = None) -> None:
        self._runners = dict(runners)
        self.refused: Mapping[str, str] = dict(refused or {})
        """Tools the allowlist named that will not run, each with the reason."""

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self._runners)

    def __contains__(self, tool: object) -> bool:
        return tool in self._runners

    def run(self, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run an allowed tool.

        Raises:
            ToolsetError: the tool is not one this executor was built with.
        """
        runner = self._runners.get(tool)
        if runner is None:
            raise ToolsetError(f"tool {tool!r} is not allowed to run in shadow")
        return runner(arguments)


class McpToolset:
    """One MCP server's tools, over one session held between ``open`` and ``close``."""

    def __init__(self, server: str | Sequence[str], *, env: Mapping[str, str] | None = None,
                 connect_timeout: float = 10.0) -> None:
        if isinstance(server, str):
            if not server.startswith(("http://", "https://")):
                raise ConfigError(f"server: expected an http(s):// URL or a command, "
                                  f"got {server!r}")
        elif not server or not all(isinstance(part, str) and part for part in server):
            raise ConfigError("server: expected a non-empty command (a list of strings)")
        self._server: str | tuple[str, ...] = server if isinstance(server, str) else tuple(server)
        self._env = dict(env) if env is not None else None
        self._connect_timeout = connect_timeout
        self._state = ToolsetState.NEW
        self._tools: tuple[Tool, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._held: concurrent.futures.Future[None] | None = None
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The server's tools, as listed when the toolset was opened."""
        return self._tools

    def open(self) -> tuple[Tool, ...]:
        """Connect, list the tools and keep the session open; returns the tools.

        Raises:
            ToolsetError: opened twice, or the server cannot be started, reached or listed
                within ``connect_timeout``.
        """
        if self._state is not ToolsetState.NEW:
            raise ToolsetError(f"cannot open a toolset that is {self._state.value}")
        self._state = ToolsetState.OPEN
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-toolset",
                                        daemon=True)
        self._thread.start()
        ready: concurrent.futures.Future[tuple[Tool, ...]] = concurrent.futures.Future()
        self._held = asyncio.run_coroutine_threadsafe(self._hold(ready), self._loop)
        try:
            self._tools = ready.result(self._connect_timeout)
        except BaseException as exc:
            self.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else first_line(exc)
            raise ToolsetError(f"MCP server {self._describe()}: cannot list its tools: "
                               f"{reason}") from exc
        return self._tools

    def close(self) -> None:
        """End the session (and a stdio server's process). Idempotent."""
        if self._state is ToolsetState.CLOSED:
            return
        self._state = ToolsetState.CLOSED
        loop, stop, held = self._loop, self._stop, self._held
        if loop is None:
            return
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        elif held is not None:
            held.cancel()
        if held is not None:
            try:
                held.result(self._connect_timeout)
            except BaseException:  # noqa: BLE001 - the session is going away either way
                held.cancel()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(self._connect_timeout)
        if not loop.is_running():
            loop.close()
        self._client = None

    def __enter__(self) -> McpToolset:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def executor(self, allowlist: Iterable[str], *, timeout: float) -> ShadowExecutor:
        """The executor of the listed tools the server offers and does not mark as writing.

        A listed tool the server does not offer, or annotates ``readOnlyHint: false``, is
        refused (in ``refused``, with the reason), and so never runs.
        """
        if self._state is not ToolsetState.OPEN:
            raise ToolsetError("executor: open the toolset first")
        if not timeout > 0:
            raise ConfigError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        offered = {tool.name: tool for tool in self._tools}
        runners: dict[str, ToolRunner] = {}
        refused: dict[str, str] = {}
        for name in allowlist:
            tool = offered.get(name)
            if tool is None:
                refused[name] = "the server does not offer it"
            elif tool.read_only is False:
                refused[name] = "the server marks it as not read-only (readOnlyHint: false)"
            else:
                runners[name] = partial(self._call, name, timeout=timeout)
        return ShadowExecutor(runners, refused)

    def _describe(self) -> str:
        return self._server if isinstance(self._server, str) else " ".join(self._server)

    async def _hold(self, ready: concurrent.futures.Future[tuple[Tool, ...]]) -> None:
        # The SDK's client must be entered and left by one task: this one, which waits
        # for close() while calls from other threads use the session it opened.
        from mcp import Client, StdioServerParameters

        target: str | StdioServerParameters
        if isinstance(self._server, str):
            target = self._server
        else:
            target = StdioServerParameters(command=self._server[0], args=list(self._server[1:]),
                                           env=self._env)
        try:
            async with Client(target) as client:
                tools = await _list_tools(client)
                self._client = client
                self._stop = asyncio.Event()
                ready.set_result(tools)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def _call(self, name: str, arguments: Mapping[str, Any], *, timeout: float) -> ToolResult:
        client, loop = self._client, self._loop
        started = time.perf_counter()
        if self._state is not ToolsetState.OPEN or client is None or loop is None:
            return ToolResult(error=f"the toolset is {self._state.value}, not open")
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(client.call_tool(name, dict(arguments)), timeout), loop)
        try:
            result = future.result(timeout + _GRACE)
        except TimeoutError:
            future.cancel()
            return ToolResult(error=f"timeout: no answer within {timeout:g} s",
                              latency_ms=_since(started))
        except Exception as exc:  # noqa: BLE001 - a tool call's failure is data, never a crash
            return ToolResult(error=f"{type(exc).__name__}: {first_line(exc)}",
                              latency_ms=_since(started))
        return _result(result, _since(started))


async def _list_tools(client: Client) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            hint = tool.annotations.read_only_hint if tool.annotations is not None else None
            tools.append(Tool(tool.name, tool.description, dict(tool.input_schema), hint))
        cursor = page.next_cursor
        if cursor is None:
            return tuple(tools)


def _result(result: CallToolResult, latency_ms: float) -> ToolResult:
    texts = [getattr(block, "text", None) for block in result.content]
    if result.is_error:
        message = " ".join(text for text in texts if text) or "the tool reported an error"
        return ToolResult(error=bounded(message), latency_ms=latency_ms)
    output: Any
    if result.structured_content is not None:
        output = result.structured_content
    else:
        output = [text if text is not None else block.model_dump(mode="json", exclude_none=True)
                  for text, block in zip(texts, result.content, strict=True)]
        if len(output) == 1:
            output = output[0]
    return ToolResult(output=bounded(output), latency_ms=latency_ms)


def bounded(value: Any, limit: int = MAX_RESULT) -> Any:
    """The value itself when its JSON fits in ``limit`` characters, else its JSON cut short."""
    text = orjson.dumps(value, default=str).decode()
    if len(text) <= limit:
        return value
    return text[:limit] + "…"


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
