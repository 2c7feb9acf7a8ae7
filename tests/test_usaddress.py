"""50 real addresses through ``extract`` with the shipped schema: every one schema-valid."""

from __future__ import annotations

from pathlib import Path

from extract import Extractor
from schemas.address import Address
from tests.conftest import read_jsonl


def test_fifty_real_addresses_are_all_schema_valid(local: Extractor, shared_data: Path) -> None:
    rows = read_jsonl(shared_data / "usaddress" / "dev.jsonl", limit=50)
    assert len(rows) == 50
    failures = []
    for row in rows:
        result = local.run(row["text"], Address)
        attempt = result.attempts[-1]
        if not result.ok or attempt.repaired:
            failures.append((row["id"], attempt.error, attempt.raw))
        else:
            assert isinstance(result.value, Address)
            Address.model_validate_json(attempt.raw or "")
    assert failures == [], f"{len(failures)}/50 not valid as generated: {failures[:3]}"
