"""Every notebook in notebooks/ runs top to bottom on the embedded model, and is committed
without outputs. An example that is not executed is assumed broken (STYLE.md, habit 10)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
# nbformat ships no annotations; typed handles keep mypy --strict quiet about untyped calls.
read_nb: Callable[..., Any] = nbformat.read
write_nb: Callable[..., Any] = nbformat.write


def test_there_are_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_authoring_a_schema.ipynb", "03_grammars.ipynb",
            "04_compliance_report.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    nb = read_nb(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: a code cell carries outputs; clear them before committing"
            )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute a copy (the committed file stays output-free) with notebooks/ as the working
    # folder, as a reader running it in Jupyter would; notebooks write only to temp folders.
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = read_nb(copy, as_version=4)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' temp folders (bench output, db) land here
    # The installed "python3" kernelspec says `python`, which PATH may resolve to another
    # interpreter: run ipykernel on this venv's interpreter, whatever PATH says.
    km = KernelManager(kernel_name="python3")
    assert km.kernel_spec is not None
    km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        # A NotebookClient given a km keeps the kernel alive unless told otherwise; shut it
        # down and close its sockets here, not at garbage collection.
        client.execute(cleanup_kc=True)
    finally:
        write_nb(nb, copy)  # the executed copy, for reading a failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"executed copy: {copy}"
