"""A real OpenAI-compatible server on loopback: llama-cpp-python's, on the embedded model.

The remote tiers are only tested honestly against a real server, and ``extract serve`` gives
users the same endpoint for their own experiments. This module starts
``python -m llama_cpp.server`` as a subprocess on a free loopback port, waits until
``/v1/models`` answers, and stops it again. It imports nothing from the tiers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from extract.errors import ConfigError, ProviderError
from extract.providers.local_model import check_gguf, embedded_model_path

__all__ = ["ModelServer", "default_server_threads", "embedded_model_path", "free_port", "serve", "start_server"]


def default_server_threads() -> int:
    """Half the machine's cores (at least one): the server shares them with its clients.

    llama.cpp's own batch default takes every core; on 2 cores, next to a test process or a
    local model, that oversubscription took 57 s for a 14-token answer that 1 thread gave in
    0.9 s (measured on the remote-tier tests).
    """
    return max(1, (os.cpu_count() or 2) // 2)


def _stderr_or_none() -> Any:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return sys.stderr


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: ask the kernel to SIGTERM the server when the test run that started it dies,
    so a crashed pytest does not leave a 0.7 GB process behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ModelServer:
    """A running ``llama_cpp.server`` process; ``base_url`` is what a client is given."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    model_path: Path
    alias: str
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log_tail(self, n_chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n_chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _models_answer(url: str, api_key: str | None) -> list[str] | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(f"{url}/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return [m.get("id", "") for m in data.get("data", [])]


def start_server(
    model: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    extra_buffers: bool = False,
    alias: str = "local",
    api_key: str | None = None,
    ready_timeout: float = 90.0,
    quiet: bool = True,
) -> ModelServer:
    """Start the server and return once ``/v1/models`` answers.

    ``quiet`` sends llama.cpp's (long) load log to a temporary file, shown only when the
    server fails to come up; ``serve`` passes ``quiet=False`` so the user sees it.
    ``n_threads`` (default ``default_server_threads()``) is used for generation and prompt
    evaluation alike; ``extra_buffers`` is ``Settings.extra_buffers`` for the server process
    (off: see ``llama_load_params``). Raises ``ConfigError`` for a model file that does not
    exist or is not a GGUF and ``ProviderError`` when the server exits or does not answer in
    ``ready_timeout`` seconds.
    """
    path = Path(model).expanduser() if model is not None else embedded_model_path()
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    check_gguf(path)
    port = port or free_port(host)
    threads = n_threads or default_server_threads()
    argv = [
        sys.executable, "-m", "extract.providers.llama_server",
        "--extra-buffers", "1" if extra_buffers else "0", "--",
        "--model", str(path), "--host", host, "--port", str(port),
        "--n_ctx", str(n_ctx), "--model_alias", alias,
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]
    if api_key:
        argv += ["--api_key", api_key]
    # Passive OpenMP waits: a server idling beside a local model must not spin on its cores.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    log_path: Path | None = None
    log: IO[bytes] | None = None
    if quiet:
        fd, name = tempfile.mkstemp(prefix="extract-llama-server-", suffix=".log")
        log_path = Path(name)
        log = os.fdopen(fd, "wb")
    # Not quiet: the server's own output goes to our stderr, so stdout carries only results.
    out: Any = log if log is not None else _stderr_or_none()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else None,
        env=env,
        preexec_fn=_die_with_parent,
    )
    server = ModelServer(process, host, port, path, alias, log_path, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise ProviderError(
                f"llama_cpp.server exited with code {process.returncode} before answering"
                + (f"; its log ends with:\n{tail}" if tail else ""),
                endpoint=server.base_url,
                transient=False,
            )
        if _models_answer(server.url, api_key) is not None:
            return server
        time.sleep(0.1)
    server.stop()
    raise ProviderError(
        f"llama_cpp.server did not answer /v1/models within {ready_timeout:.0f} s",
        endpoint=server.base_url,
        transient=True,
    )


def serve(model: Path | None, host: str = "127.0.0.1", port: int = 0, *,
          n_threads: int | None = None, extra_buffers: bool = False) -> None:
    """Run the server in the foreground until interrupted (``extract serve``)."""
    server = start_server(model, host=host, port=port or None, quiet=False, n_threads=n_threads,
                          extra_buffers=extra_buffers)
    print(
        f"serving {server.model_path.name} as model {server.alias!r} at {server.base_url}\n"
        f"  export EXTRACT_BASE_URL={server.base_url}",
        flush=True,
    )
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
