"""Shared fixtures: the real embedded model, the shared labelled data, offline settings."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
# Tests count model calls and time them: the result cache is on only where a test asks for it.
os.environ.setdefault("EXTRACT_CACHE", "false")

pytest_plugins = ["tests.remote_fixtures"]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: expected {DATA} beside the repository")
    return DATA


@pytest.fixture(scope="session")
def local() -> Iterator[Any]:
    """One local-tier Extractor for the whole session: the model loads once."""
    from extract import Extractor

    yield Extractor(tiers=["local"])
