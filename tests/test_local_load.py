"""How the local model is loaded: AMX-safe by construction, and clear errors for bad files and settings.

llama.cpp built natively on a CPU with AMX moved the weights into its AMX buffer type and
segfaulted on the first decode. That crash cannot show on a CPU without AMX, so these tests
check what guards against it everywhere: the load parameters llama.cpp really received
(``use_extra_bufts`` off unless ``extra_buffers`` says otherwise), in the library and in the
server process, and that the choice is recorded on every Attempt.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from extract import ConfigError, Extractor, Settings
from extract.providers.local_model import check_gguf, embedded_model_path, gguf_architecture, load_local_model
from extract.providers.server import ModelServer, start_server

REPO = Path(__file__).resolve().parent.parent


def test_library_loads_without_extra_buffer_types_by_default() -> None:
    model = load_local_model(Settings.resolve())
    llm = model.llm  # type: ignore[attr-defined]
    assert llm.model_params.use_extra_bufts is False
    assert model.info.extra_buffers is False


def test_the_choice_is_recorded_on_every_attempt(local: Extractor) -> None:
    res = local.run("12 Main St, Springfield", {"type": "object", "properties": {"street": {"type": "string"}}})
    assert res.attempts
    assert all(a.model is not None and a.model.extra_buffers is False for a in res.attempts)


def test_extra_buffers_setting_turns_them_on_for_that_load_only() -> None:
    """In a process of its own: a second copy of the weights, and a Llama made outside."""
    code = (
        "import llama_cpp\n"
        "from extract import Settings\n"
        "from extract.providers.local_model import embedded_model_path, load_local_model\n"
        "m = load_local_model(Settings.resolve(extra_buffers=True))\n"
        "print(m.llm.model_params.use_extra_bufts, m.info.extra_buffers)\n"
        "plain = llama_cpp.Llama(str(embedded_model_path()), n_ctx=256, verbose=False)\n"
        "print(plain.model_params.use_extra_bufts)\n"
        "off = load_local_model(Settings.resolve(extra_buffers=False))\n"
        "print(off.llm.model_params.use_extra_bufts)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, timeout=300).stdout.split()
    # On for the load that asked; llama.cpp's own default (on) untouched outside; off again after.
    assert out == ["True", "True", "True", "False"]


def test_a_setting_that_is_not_a_boolean_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra_buffers"):
        Settings.resolve(extra_buffers="sometimes")
    text = tmp_path / "in.txt"
    text.write_text("12 Main St", encoding="utf-8")
    env = {**os.environ, "EXTRACT_EXTRA_BUFFERS": "sometimes"}
    proc = subprocess.run([sys.executable, "-m", "extract", "run", "--regex", r"\d+", str(text)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "extra_buffers" in proc.stderr


def test_a_file_that_is_not_a_gguf_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("not weights", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.gguf is not a GGUF file"):
        check_gguf(bogus)
    with pytest.raises(ConfigError, match="not a GGUF file"):
        load_local_model(Settings.resolve(model_path=bogus))
    with pytest.raises(ConfigError, match="not a GGUF file"):
        start_server(bogus)
    text = tmp_path / "in.txt"
    text.write_text("12 Main St", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "extract", "run", "--regex", r"\d+", "--tier", "local", str(text)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "EXTRACT_MODEL_PATH": str(bogus)})
    assert proc.returncode == 2, proc.stderr
    assert str(bogus) in proc.stderr and "not a GGUF file" in proc.stderr


def _gguf(path: Path, architecture: str) -> Path:
    """A GGUF v3 header with one key, ``general.architecture``, and no tensors."""
    key, value = b"general.architecture", architecture.encode()
    path.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value
    )
    return path


def test_a_gguf_of_an_unknown_architecture_is_named(tmp_path: Path) -> None:
    weird = _gguf(tmp_path / "weird.gguf", "nosucharch")
    assert gguf_architecture(weird) == "nosucharch"
    assert gguf_architecture(embedded_model_path()) == "llama"
    with pytest.raises(ConfigError) as info:
        load_local_model(Settings.resolve(model_path=weird))
    assert "weird.gguf" in str(info.value) and "'nosucharch'" in str(info.value)


def test_server_loads_without_extra_buffer_types(llama_server: ModelServer) -> None:
    # The fixture's server was started through start_server, as `extract serve` is.
    assert "extract: llama.cpp extra buffer types off (use_extra_bufts=False)" in llama_server.log_tail(1_000_000)
    argv = llama_server.process.args
    assert isinstance(argv, list)
    assert argv[argv.index("--n_threads") + 1] == "1" and argv[argv.index("--n_threads_batch") + 1] == "1"


def test_server_extra_buffers_flag_reaches_the_server_process() -> None:
    with start_server(extra_buffers=True, n_ctx=512) as server:
        assert "extra buffer types on (use_extra_bufts=True)" in server.log_tail(1_000_000)
