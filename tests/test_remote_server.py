"""``extract serve`` and ``start_server``: a real server process that starts, answers and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from extract.errors import ConfigError
from extract.providers.server import free_port, start_server


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model file not found"):
        start_server(tmp_path / "nope.gguf")


def test_extract_serve_answers_and_stops_on_interrupt() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "extract", "serve", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in first, first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as resp:
            models = json.loads(resp.read())
        assert [m["id"] for m in models["data"]] == ["local"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        time.sleep(0.2)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_extract_serve_refuses_a_file_that_is_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"PK\x03\x04 not a model")
    proc = subprocess.run(
        [sys.executable, "-m", "extract", "serve", "--model", str(bogus), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "weights.bin is not a GGUF file" in proc.stderr
