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
from extract.types import Attempt, AttemptError, ModelInfo, Result, Usage

__all__ = [
    "Attempt",
    "AttemptError",
    "ConfigError",
    "ExtractError",
    "ExtractionFailed",
    "Extractor",
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
]
