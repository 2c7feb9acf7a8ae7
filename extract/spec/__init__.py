"""Specs: what the user asks for, normalized once and checked against each tier's abilities.

Nothing here imports a tier or a provider.
"""

from extract.spec.compile import compile_spec, local_constraint, max_output_chars
from extract.spec.features import FEATURES, TIER_SUPPORT, detect_features, ensure_supported
from extract.spec.model import Regex, Spec

__all__ = [
    "FEATURES",
    "TIER_SUPPORT",
    "Regex",
    "Spec",
    "compile_spec",
    "detect_features",
    "ensure_supported",
    "local_constraint",
    "max_output_chars",
]
