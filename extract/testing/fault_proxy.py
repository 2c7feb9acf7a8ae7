"""A fault-injecting HTTP/1.1 proxy, run as its own process between a client and a server.

Retries, backoff and circuit breaking are only believable when the faults are real bytes on a
real socket: a 429 with a ``Retry-After`` header, a connection cut halfway through a body, a
200 whose JSON stops mid-object. This proxy produces each of those on demand, in front of any
OpenAI-compatible server, so tests, the benchmark and batch runs exercise the real HTTP client
instead of a patched one.

Run it::

    python -m extract.testing.fault_proxy --upstream http://127.0.0.1:8765 --port 0 \
        --rate 0.3 --seed 1 --faults 429,500,cut

It prints ``listening http://127.0.0.1:PORT`` on its first stdout line, then serves until
killed. It is steered at run time through two control routes, so one process serves a whole
test module:

- ``POST /__proxy__/config`` with a JSON object of the ``ProxyConfig`` fields to change
  (``next``: faults for the next requests, in order; ``rate``/``seed``/``faults``: a seeded
  random fault rate; ``reject``: request shapes answered with 400; ``strip``: request fields
  dropped before forwarding, as a server that ignores them would; ``require_key``; timings).
- ``GET /__proxy__/stats``: requests seen, forwarded, faults injected by kind, and the token
  usage of every completion delivered intact (what the server reported, summed).
- ``GET /__proxy__/requests``: the bodies of the last ``record`` model calls (off by default).
- ``POST /__proxy__/reset``: default config and zeroed stats.

Only the standard library is used, so the proxy starts fast and behaves the same whatever
HTTP client the project uses. It listens on loopback only. This module imports nothing from
the rest of the package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FAULT_KINDS", "REJECTABLE", "STRIPPABLE", "FaultProxy", "ProxyConfig", "ProxyStats", "main", "serve"]

# Every fault the proxy can inject, and what the client sees. Tests enumerate this table.
FAULT_KINDS: dict[str, str] = {
    "429": "HTTP 429 Too Many Requests with a Retry-After header",
    "500": "HTTP 500 with a JSON error body",
    "503": "HTTP 503 with a JSON error body and a Retry-After header",
    "400": "HTTP 400 with a JSON error body (a permanent failure)",
    "401": "HTTP 401 (a permanent failure)",
    "403": "HTTP 403 (a permanent failure)",
    "delay": "hold the request for delay_s seconds (past the client's timeout), then forward it",
    "reset": "close the connection without answering",
    "cut": "forward, then close the connection halfway through the body",
    "malformed": "HTTP 200, application/json, a body that is not JSON",
    "truncated": "HTTP 200, a complete HTTP response whose JSON body stops halfway",
    "content_type": "HTTP 200 with text/html and an HTML body",
}

# Request shapes the proxy can refuse with a 400, as a server without that feature would.
# ``grammar`` is llama.cpp's GBNF field, ``structured_outputs`` vLLM's grammar/regex field.
REJECTABLE = ("json_schema", "json_object_schema", "json_object", "tools", "grammar", "structured_outputs",
              "logprobs")
# Request fields the proxy can drop before forwarding, as a server that ignores them would.
STRIPPABLE = ("grammar", "structured_outputs", "response_format", "logprobs", "top_logprobs")

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
}


@dataclass
class ProxyConfig:
    """What the proxy does to the next requests; every field can be changed at run time."""

    rate: float = 0.0
    seed: int = 0
    faults: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    next: list[str] = field(default_factory=list)
    reject: list[str] = field(default_factory=list)
    strip: list[str] = field(default_factory=list)
    require_key: str | None = None
    retry_after: float = 1.0
    delay_s: float = 5.0
    path_prefix: str = "/v1/chat/"
    # Keep the bodies of the last ``record`` requests under path_prefix (GET /__proxy__/requests),
    # so a test can prove what left the client (no PII, the unchanged instructions).
    record: int = 0

    def validate(self) -> None:
        unknown = [k for k in [*self.faults, *self.next] if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        bad = [r for r in self.reject if r not in REJECTABLE]
        if bad:
            raise ValueError(f"unknown reject shape(s) {bad}; known: {', '.join(REJECTABLE)}")
        bad = [r for r in self.strip if r not in STRIPPABLE]
        if bad:
            raise ValueError(f"unknown strip field(s) {bad}; known: {', '.join(STRIPPABLE)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")


@dataclass
class ProxyStats:
    """Counts since the last reset; ``usage`` sums what the server reported, delivered intact."""

    seen: int = 0
    chat: int = 0  # requests under path_prefix: the model calls, not /v1/models
    forwarded: int = 0
    delivered: int = 0
    rejected: int = 0
    abandoned: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    usage: Counter[str] = field(default_factory=Counter)
    stripped: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("faults", "status", "usage", "stripped"):
            data[key] = dict(getattr(self, key))
        return data


class _Request:
    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class _Proxy:
    def __init__(self, upstream: str, config: ProxyConfig) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.up_host = parts.hostname
        self.up_port = parts.port or 80
        # Clients keep their own /v1 in the path; an upstream given as ".../v1" would double it.
        self.up_prefix = parts.path.rstrip("/").removesuffix("/v1")
        self.config = config
        self.stats = ProxyStats()
        self.queue: deque[str] = deque(config.next)
        self.rng = random.Random(config.seed)
        self.recorded: deque[str] = deque(maxlen=config.record)

    # -- control ----------------------------------------------------------------------
    def configure(self, changes: dict[str, Any]) -> None:
        merged = {**asdict(self.config), **changes}
        unknown = set(changes) - set(asdict(self.config))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        config = ProxyConfig(**merged)
        config.validate()
        self.config = config
        if "next" in changes:
            self.queue = deque(config.next)
        if "seed" in changes or "rate" in changes:
            self.rng = random.Random(config.seed)
        if "record" in changes:
            self.recorded = deque(self.recorded, maxlen=config.record)

    def reset(self) -> None:
        self.config = ProxyConfig()
        self.stats = ProxyStats()
        self.queue = deque()
        self.rng = random.Random(0)
        self.recorded = deque(maxlen=0)

    def pick_fault(self, request: _Request) -> str | None:
        if not request.target.startswith(self.config.path_prefix):
            return None
        if self.queue:
            return self.queue.popleft()
        if self.config.rate > 0 and self.config.faults:
            if self.rng.random() < self.config.rate:
                return self.rng.choice(self.config.faults)
        return None

    def rejection(self, request: _Request) -> str | None:
        if not self.config.reject or not request.body:
            return None
        try:
            body = json.loads(request.body)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        shapes: set[str] = set()
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            if kind == "json_object" and "schema" in fmt:
                shapes.add("json_object_schema")
            elif isinstance(kind, str):
                shapes.add(kind)
        if body.get("tools"):
            shapes.add("tools")
        for name in ("grammar", "structured_outputs"):
            if body.get(name) is not None:
                shapes.add(name)
        if body.get("logprobs"):
            shapes.add("logprobs")
        hit = sorted(shapes & set(self.config.reject))
        return hit[0] if hit else None

    # -- one connection -----------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            if request.target.startswith("/__proxy__/"):
                await self.control(request, writer)
            else:
                await self.proxy(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that hung up or spoke garbage: nothing to answer
        except Exception as exc:  # keep serving; say what broke on stderr
            print(f"fault proxy: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def control(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        route = request.target.split("?", 1)[0]
        try:
            if route == "/__proxy__/stats" and request.method == "GET":
                payload: dict[str, Any] = self.stats.to_json()
            elif route == "/__proxy__/requests" and request.method == "GET":
                payload = {"bodies": list(self.recorded)}
            elif route == "/__proxy__/config" and request.method == "GET":
                payload = {**asdict(self.config), "queued": list(self.queue)}
            elif route == "/__proxy__/config" and request.method == "POST":
                self.configure(json.loads(request.body or b"{}"))
                payload = {**asdict(self.config), "queued": list(self.queue)}
            elif route == "/__proxy__/reset" and request.method == "POST":
                self.reset()
                payload = {"reset": True}
            else:
                await _respond(writer, 404, {"error": f"no control route {request.method} {route}"})
                return
        except (ValueError, TypeError) as exc:
            await _respond(writer, 400, {"error": str(exc)})
            return
        await _respond(writer, 200, payload)

    async def proxy(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.stats.seen += 1
        cfg = self.config
        if request.target.startswith(cfg.path_prefix):
            self.stats.chat += 1
            if cfg.record:
                self.recorded.append(request.body.decode("utf-8", "replace"))
        if cfg.require_key is not None:
            if request.header("authorization") != f"Bearer {cfg.require_key}":
                self.stats.rejected += 1
                await self.error(writer, 401, "invalid api key", "authentication_error")
                return
        shape = self.rejection(request)
        if shape is not None:
            self.stats.rejected += 1
            what = f"request field {shape!r}" if shape in ("grammar", "structured_outputs", "logprobs") else \
                f"response format {shape!r}"
            await self.error(writer, 400, f"{what} is not supported by this endpoint", "invalid_request_error")
            return
        if cfg.strip and request.target.startswith(cfg.path_prefix):
            request.body = _stripped(request.body, cfg.strip, self.stats)
        fault = self.pick_fault(request)
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault in ("429", "500", "503", "400", "401", "403"):
            assert fault is not None
            status = int(fault)
            extra = [("Retry-After", _seconds(cfg.retry_after))] if status in (429, 503) else []
            await self.error(writer, status, f"injected fault {fault}", "server_error", extra)
            return
        if fault == "reset":
            writer.transport.abort()
            return
        if fault == "malformed":
            await self.raw(writer, 200, "application/json", b'{"id": "x", "choices": [}')
            return
        if fault == "content_type":
            await self.raw(writer, 200, "text/html", b"<html><body>gateway says hi</body></html>")
            return
        if fault == "delay":
            # Wait, but notice a client that gave up: forwarding its request would only keep
            # the (single-threaded) model server busy for nobody.
            try:
                gone = await asyncio.wait_for(reader.read(1), timeout=cfg.delay_s) == b""
            except asyncio.TimeoutError:
                gone = False
            if gone:
                self.stats.abandoned += 1
                return
        status, headers, body = await self.forward(request)
        self.stats.forwarded += 1
        if fault == "cut":
            head = _head(status, headers, len(body))
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            writer.transport.abort()
            return
        if fault == "truncated":
            cut = body[: len(body) // 2]
            await self.raw(writer, status, _content_type(headers), cut)
            return
        self.stats.status[str(status)] += 1
        writer.write(_head(status, headers, len(body)) + body)
        await writer.drain()
        self.stats.delivered += 1
        if 200 <= status < 300:
            self.count_usage(body)

    def count_usage(self, body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
        except (ValueError, AttributeError):
            return
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                self.stats.usage[key] += usage[key]

    async def error(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        message: str,
        kind: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self.stats.status[str(status)] += 1
        body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
        await self.raw(writer, status, "application/json", body, extra)

    async def raw(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [("Content-Type", content_type), *(extra or [])]
        writer.write(_head(status, headers, len(body)) + body)
        await writer.drain()

    async def forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        reader, writer = await asyncio.open_connection(self.up_host, self.up_port)
        try:
            lines = [f"{request.method} {self.up_prefix}{request.target} HTTP/1.1"]
            lines.append(f"Host: {self.up_host}:{self.up_port}")
            for k, v in request.headers:
                if k.lower() not in _HOP_BY_HOP:
                    lines.append(f"{k}: {v}")
            lines += [
                "Accept-Encoding: identity",
                "Connection: close",
                f"Content-Length: {len(request.body)}",
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
            await writer.drain()
            return await _read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _stripped(body: bytes, fields: list[str], stats: ProxyStats) -> bytes:
    """The request body without ``fields`` (counted in ``stats.stripped``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    hit = [f for f in fields if f in data]
    if not hit:
        return body
    for name in hit:
        data.pop(name)
        stats.stripped[name] += 1
    return json.dumps(data).encode()


async def _respond(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    writer.write(_head(status, [("Content-Type", "application/json")], len(body)) + body)
    await writer.drain()


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _content_type(headers: list[tuple[str, str]]) -> str:
    for k, v in headers:
        if k.lower() == "content-type":
            return v
    return "application/octet-stream"


_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable",
}


def _head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    for k, v in headers:
        if k.lower() not in _HOP_BY_HOP:
            lines.append(f"{k}: {v}")
    lines += [f"Content-Length: {length}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_headers(reader: asyncio.StreamReader) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if line in (b"\r\n", b"\n"):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = await _read_headers(reader)
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return _Request(method, target, headers, body)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = await _read_headers(reader)
    lowered = {k.lower(): v for k, v in headers}
    if lowered.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await _read_headers(reader)  # trailers
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif "content-length" in lowered:
        body = await reader.readexactly(int(lowered["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


async def serve(upstream: str, host: str, port: int, config: ProxyConfig) -> None:
    """Serve until cancelled; print the bound address first so a parent can read it."""
    config.validate()
    proxy = _Proxy(upstream, config)
    server = await asyncio.start_server(proxy.handle, host, port, backlog=256)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


class FaultProxy:
    """A running proxy process, and the handle tests and the benchmark steer it with.

    ``start`` spawns ``python -m extract.testing.fault_proxy`` on a free loopback port and
    reads the port it printed; ``configure``, ``stats`` and ``reset`` talk to its control
    routes; ``stop`` terminates it. Usable as a context manager.
    """

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``) a client should be given."""
        return f"{self.url}/v1"

    @classmethod
    def start(cls, upstream: str, *, ready_timeout: float = 20.0, **config: Any) -> FaultProxy:
        argv = [sys.executable, "-m", "extract.testing.fault_proxy", "--upstream", upstream,
                "--port", "0"]
        argv.append("--exit-with-parent")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            process.kill()
            process.wait()
            raise RuntimeError(f"fault proxy did not start (said {line!r})")
        proxy = cls(process, line.split(" ", 1)[1])
        if config:
            proxy.configure(**config)
        return proxy

    def _call(self, method: str, route: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            f"{self.url}/__proxy__/{route}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the socket open until closed
                detail = exc.read().decode(errors="replace")
            raise ValueError(f"fault proxy refused {method} {route}: {detail}") from None

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "config", changes)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """The recorded request bodies (``configure(record=N)`` first), oldest first, as JSON."""
        bodies: list[str] = self._call("GET", "requests")["bodies"]
        return [json.loads(b) for b in bodies]

    def reset(self, **config: Any) -> None:
        self._call("POST", "reset", {})
        if config:
            self.configure(**config)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _exit_on_stdin_eof() -> None:
    sys.stdin.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m extract.testing.fault_proxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="the server, e.g. http://127.0.0.1:8765")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="comma-separated kinds")
    parser.add_argument("--reject", default="", help=f"comma-separated: {', '.join(REJECTABLE)}")
    parser.add_argument("--strip", default="", help=f"comma-separated: {', '.join(STRIPPABLE)}")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--delay", type=float, default=5.0, help="seconds held by 'delay'")
    parser.add_argument(
        "--exit-with-parent", action="store_true",
        help="exit when stdin closes, so a crashed test run leaves no proxy behind",
    )
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        threading.Thread(target=_exit_on_stdin_eof, daemon=True).start()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the fault proxy only listens on loopback")
    config = ProxyConfig(
        rate=args.rate,
        seed=args.seed,
        faults=[f for f in args.faults.split(",") if f],
        reject=[r for r in args.reject.split(",") if r],
        strip=[r for r in args.strip.split(",") if r],
        retry_after=args.retry_after,
        delay_s=args.delay,
    )
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream, args.host, args.port, config))


if __name__ == "__main__":
    main()
