"""The published reference shown beside our schema-corpus figures: JSONSchemaBench.

Geng et al., 2025, "Generating Structured Outputs from Language Models: Benchmark and
Studies" (arXiv:2501.10868) report *empirical coverage* (the share of a collection's schemas
for which an engine produced a schema-valid instance) per collection for Guidance,
llama.cpp, Outlines, XGrammar, OpenAI and Gemini, on their models (Llama-3.1-8B for the open
engines). Those figures are theirs, not ours, and are not comparable number for number.

Only figures we could find in a source are written here. The paper's full per-collection
table (including its JSONSchemaStore row and its JSON-Schema-Test-Suite coverage) could not
be retrieved from the material available when this was written, so those cells say so
instead of holding a remembered number. The figures below are quoted from a summary of the
paper (beancount.io research log, 2026-07-08), which cites arXiv:2501.10868.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JSONSCHEMABENCH"]

JSONSCHEMABENCH: dict[str, Any] = {
    "source": (
        "Geng et al., 2025, JSONSchemaBench (arXiv:2501.10868), empirical coverage on their "
        "models; quoted via the beancount.io research log of 2026-07-08 that summarises it"
    ),
    "engines": ["Guidance", "llama.cpp", "Outlines", "XGrammar", "OpenAI"],
    "collections": {
        "GitHub-Hard": {"Guidance": 0.41, "llama.cpp": 0.39, "Outlines": 0.03, "XGrammar": 0.28,
                        "OpenAI": 0.09},
        "GlaiveAI-2K": {"note": "all engines above 0.86 (per-engine figures not retrieved)"},
        "JSONSchemaStore": {"note": "not retrieved: the paper's table could not be read here"},
        "JSON-Schema-Test-Suite": {"note": "not retrieved: the paper reports it as a figure"},
    },
    # Which of their collections each of our corpora corresponds to.
    "ours": {"schemastore": "JSONSchemaStore", "json-schema-test-suite": "JSON-Schema-Test-Suite"},
}
