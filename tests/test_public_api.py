"""The facade: every name in ``__all__`` imports, and the exception tree is as documented."""

from __future__ import annotations

import importlib

import extract
from extract import (
    ConfigError,
    ExtractError,
    ExtractionFailed,
    ProviderError,
    Result,
    UnsupportedSchema,
)


def test_every_public_name_imports() -> None:
    module = importlib.import_module("extract")
    assert sorted(extract.__all__) == sorted(set(extract.__all__))
    for name in extract.__all__:
        assert getattr(module, name) is not None, name
    expected = {
        "extract", "aextract", "Extractor", "Result", "Attempt", "Usage", "Regex",
        "ExtractError", "ConfigError", "UnsupportedSchema", "ProviderError", "ExtractionFailed",
        "check_spec", "CheckReport",
        "extract_many", "aextract_many",
        "Chunk", "Price", "enable_event_log",
    }
    assert expected <= set(extract.__all__)


def test_exception_tree_is_rooted_and_split_by_who_acts() -> None:
    for exc in (ConfigError, UnsupportedSchema, ProviderError, ExtractionFailed):
        assert issubclass(exc, ExtractError)
    err = UnsupportedSchema("not", "local", path="/properties/a")
    assert err.feature == "not" and err.tier == "local" and "'not'" in str(err) and "local" in str(err)
    perr = ProviderError("boom", endpoint="http://127.0.0.1:1/v1", transient=True, status=503)
    assert perr.transient and perr.status == 503
    failed = ExtractionFailed(Result())
    assert failed.result.attempts == [] and "no tier was run" in str(failed)
