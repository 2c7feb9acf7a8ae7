"""The published reference shown beside our schema-corpus figures: JSONSchemaBench, from its own sources.

Geng et al., 2025, "Generating Structured Outputs from Language Models: Benchmark and
Studies" (arXiv:2501.10868) and its repositories. Every figure below is copied from a primary
source named with it — a file of ``guidance-ai/jsonschemabench`` or ``epfl-dlab/jsonschemabench``
at a stated commit — and nothing is remembered or taken from a summary. The paper's
per-collection empirical-coverage table (its GlaiveAI … JSONSchemaStore rows) could not be
read from the material available here (the paper's text was not retrievable past its
abstract), so it is left out: ``best_published`` returns None for every collection and the
report says "not read from a primary source" rather than print a number we cannot cite.
Searched again for issue 24's coverage target (2026-12-02): ``guidance-ai/jsonschemabench`` @
ba103c7 and ``epfl-dlab/jsonschemabench`` @ 8003e84 hold no per-collection table (README,
code, images), and the stored arXiv 2501.10868v2 page stops after its introduction. So the
"JSONSchemaStore 0.38" that issue 24 quotes "by our reading" has no source here either.

What is here:

- the metric definitions, from ``epfl-dlab/jsonschemabench`` ``core/evaluator.py``: declared
  coverage = the engine compiled the schema; empirical coverage = the output parses and
  validates against the schema (``Draft202012Validator`` with a format checker);
  compliance = empirical coverage over the schemas declared covered;
- the JSON Schema Test Suite coverage figure (``img/Test_Suite_coverage.png``): per test-suite
  file, the fraction of its test cases each engine passed, for Outlines, llama.cpp, XGrammar
  and Guidance, read off the figure's cells (two decimals, as printed). Its unit is the
  test case (a schema with its instances), the unit of our ``json-schema-test-suite`` rows;
  its criterion is theirs (the figure does not say more than "fraction of tests passed"),
  ours is "produced an instance valid against the full schema";
- MaskBench (``maskbench/README.md``): per grammar engine, schemas passing of 11,306 — mask
  computation checked against valid and invalid instances, no LLM involved.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JSONSCHEMABENCH", "TEST_SUITE_COVERAGE", "best_published"]

GUIDANCE_REPO = "guidance-ai/jsonschemabench"
GUIDANCE_COMMIT = "ba103c73756198dd9b149ddc7db7867da7a077f6"
EPFL_REPO = "epfl-dlab/jsonschemabench"
EPFL_COMMIT = "8003e8405c4d8d8b327b1eb472c9856297d75493"

# img/Test_Suite_coverage.png at GUIDANCE_COMMIT: fraction of test cases passed, per file of
# the JSON Schema Test Suite (draft 2020-12), columns Outlines, llama.cpp, XGrammar, Guidance.
TEST_SUITE_ENGINES = ("Outlines", "llama.cpp", "XGrammar", "Guidance")
TEST_SUITE_COVERAGE: dict[str, tuple[float, float, float, float]] = {
    "additionalProperties": (0.22, 0.56, 0.22, 0.67),
    "allOf": (0.42, 0.17, 0.25, 0.75),
    "anchor": (0.00, 0.00, 0.00, 1.00),
    "anyOf": (0.38, 0.25, 0.50, 1.00),
    "boolean_schema": (0.50, 0.50, 0.50, 1.00),
    "const": (0.33, 0.60, 0.47, 0.60),
    "contains": (0.00, 0.00, 0.14, 0.00),
    "content": (0.00, 0.00, 1.00, 1.00),
    "default": (0.67, 0.67, 0.67, 1.00),
    "defs": (0.00, 0.00, 0.00, 0.00),
    "dependentRequired": (0.00, 0.00, 0.25, 0.00),
    "dependentSchemas": (0.00, 0.00, 0.00, 0.00),
    "dynamicRef": (0.00, 0.00, 0.27, 0.00),
    "enum": (0.50, 0.50, 0.64, 0.64),
    "exclusiveMaximum": (0.00, 0.00, 0.00, 1.00),
    "exclusiveMinimum": (0.00, 0.00, 0.00, 1.00),
    "if-then-else": (0.00, 0.00, 0.40, 0.00),
    "infinite-loop-detection": (0.00, 1.00, 0.00, 1.00),
    "items": (0.10, 0.20, 0.30, 1.00),
    "maxContains": (0.00, 0.00, 0.25, 0.00),
    "maxItems": (0.00, 0.00, 0.00, 0.50),
    "maxLength": (0.00, 0.00, 0.00, 0.00),
    "maxProperties": (0.00, 0.00, 0.00, 0.00),
    "maximum": (0.00, 0.00, 0.00, 1.00),
    "minContains": (0.12, 0.12, 0.25, 0.12),
    "minItems": (0.00, 0.00, 0.00, 0.50),
    "minLength": (0.00, 0.00, 0.00, 0.50),
    "minProperties": (0.00, 0.00, 0.00, 0.00),
    "minimum": (0.00, 0.00, 0.00, 1.00),
    "multipleOf": (0.40, 0.40, 0.40, 0.20),
    "not": (0.22, 0.22, 0.22, 0.22),
    "oneOf": (0.45, 0.45, 0.09, 0.27),
    "pattern": (0.00, 0.00, 0.50, 1.00),
    "patternProperties": (0.00, 0.00, 0.20, 0.00),
    "prefixItems": (0.25, 0.25, 0.50, 1.00),
    "properties": (0.17, 0.17, 0.17, 0.83),
    "propertyNames": (0.00, 0.00, 0.33, 0.00),
    "ref": (0.34, 0.26, 0.14, 0.86),
    "required": (0.40, 0.40, 0.40, 0.80),
    "type": (0.55, 0.91, 0.00, 0.91),
    "unevaluatedItems": (0.15, 0.19, 0.26, 0.07),
    "unevaluatedProperties": (0.25, 0.20, 0.23, 0.12),
    "uniqueItems": (0.17, 0.17, 0.33, 0.00),
}

# maskbench/README.md at GUIDANCE_COMMIT ("Performance Metrics", engines llguidance 0.7.10,
# xgrammar 0.1.17, llama-cpp-python 0.3.8, outlines-core 0.2.3): schemas passing of 11,306.
MASKBENCH_PASSING = {"LLGuidance": 8909, "XGrammar": 8122, "llama.cpp": 6505, "XGrammar.cpp": 6387,
                     "Outlines": 7050}
MASKBENCH_SCHEMAS = 11306


def best_published(collection: str) -> str | None:
    """The best published empirical coverage for one of their collections, with its engine and
    source; None where no primary source could be read (today: every collection, see above)."""
    return _BEST.get(collection)


_BEST: dict[str, str] = {}

JSONSCHEMABENCH: dict[str, Any] = {
    "source": (
        f"Geng et al., 2025, JSONSchemaBench (arXiv:2501.10868); figures from {GUIDANCE_REPO} "
        f"@ {GUIDANCE_COMMIT[:10]} and definitions from {EPFL_REPO} @ {EPFL_COMMIT[:10]}"
    ),
    "definitions": f"{EPFL_REPO} core/evaluator.py @ {EPFL_COMMIT[:10]}",
    # Which of their collections each of our corpora corresponds to.
    "ours": {"schemastore": "JSONSchemaStore", "json-schema-test-suite": "JSON-Schema-Test-Suite"},
    "tables": [
        {
            "title": "JSON Schema Test Suite: fraction of test cases passed per file (theirs, their models)",
            "source": f"{GUIDANCE_REPO} img/Test_Suite_coverage.png @ {GUIDANCE_COMMIT[:10]}",
            "header": ["file", *TEST_SUITE_ENGINES],
            "rows": [[name, *(f"{v:.2f}" for v in values)] for name, values in TEST_SUITE_COVERAGE.items()],
        },
        {
            "title": "MaskBench: schemas whose mask computation passed its instance tests (no LLM)",
            "source": f"{GUIDANCE_REPO} maskbench/README.md @ {GUIDANCE_COMMIT[:10]}",
            "header": ["engine", "passing", "of schemas", "share"],
            "rows": [[name, str(n), str(MASKBENCH_SCHEMAS), f"{n / MASKBENCH_SCHEMAS:.2f}"]
                     for name, n in MASKBENCH_PASSING.items()],
        },
    ],
}
