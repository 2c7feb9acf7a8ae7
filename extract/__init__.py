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
from extract.front.authoring import CheckReport, check_spec
from extract.front.batch import aextract_many, extract_many
from extract.pipeline import Extractor, aextract, aextract_all, aextract_iter, extract, extract_all, extract_iter
from extract.runtime.observability import enable_event_log
from extract.settings import Price, Settings
from extract.spec import Regex, Spec, compile_spec
from extract.spec.grammar import Grammar, sql_grammar_for_sqlite
from extract.types import Attempt, AttemptError, Chunk, FieldGrounding, ModelInfo, Result, Usage
from extract.validate import Checked, parse_output

__all__ = [
    "Attempt",
    "AttemptError",
    "CheckReport",
    "Checked",
    "Chunk",
    "ConfigError",
    "ExtractError",
    "ExtractionFailed",
    "Extractor",
    "FieldGrounding",
    "Grammar",
    "ModelInfo",
    "Price",
    "ProviderError",
    "Regex",
    "Result",
    "Settings",
    "Spec",
    "UnsupportedSchema",
    "Usage",
    "aextract",
    "aextract_all",
    "aextract_iter",
    "aextract_many",
    "check_spec",
    "compile_spec",
    "enable_event_log",
    "extract",
    "extract_all",
    "extract_iter",
    "extract_many",
    "parse_output",
    "sql_grammar_for_sqlite",
]
