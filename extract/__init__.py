"""extract: unstructured text -> validated structured data, with honest compliance figures.

The public API is exactly ``__all__``; everything else may change.
"""

from extract.errors import (
    ConfigError,
    ExtractError,
    ExtractionFailed,
    ProviderError,
    UnsupportedSchema,
)
from extract.pipeline import Extractor, aextract, extract
from extract.settings import Settings
from extract.spec import Regex, Spec, compile_spec
from extract.spec.grammar import Grammar, sql_grammar_for_sqlite
from extract.types import Attempt, AttemptError, ModelInfo, Result, Usage
from extract.validate import Checked, parse_output

__all__ = [
    "Attempt",
    "AttemptError",
    "Checked",
    "ConfigError",
    "ExtractError",
    "ExtractionFailed",
    "Extractor",
    "Grammar",
    "ModelInfo",
    "ProviderError",
    "Regex",
    "Result",
    "Settings",
    "Spec",
    "UnsupportedSchema",
    "Usage",
    "aextract",
    "compile_spec",
    "extract",
    "parse_output",
    "sql_grammar_for_sqlite",
]
