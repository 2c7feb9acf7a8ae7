"""Example pools: few-shot (text, answer) pairs, the closest ones chosen for each input.

A 135M model learns more from three addresses that look like the one in hand than from any
wording of the instructions (benchmarks/ablation.py: usaddress field F1 rises from ~0.4 to
~0.7). ``ExamplePool`` holds the user's pairs, validates each against the spec once (a bad
example is a ``ConfigError`` naming its index, before any model runs), and picks ``k`` per
input by similarity, deterministically: the same input and pool always give the same
examples in the same order, so results reproduce and the prompt cache is reused.

Similarity is word overlap with a shape back-off (``similarity``); measured against
character trigrams and plain word overlap in benchmarks/ablation.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel

from extract.errors import ConfigError
from extract.spec.model import Spec
from extract.spec.prompt import Example
from extract.validate.check import validate_value

__all__ = ["DEFAULT_K", "Example", "ExamplePool", "Measure", "group_examples", "schema_examples", "shown_examples",
           "similarity"]

# Measured on usaddress dev (benchmarks/ablation.py): more examples help up to the point
# where prompt evaluation time dominates; see the closing table in the README.
DEFAULT_K = 6
# Rough characters per token for the budget check (English text and JSON on SmolLM2's
# tokenizer average ~3.5; 3 errs on the side of "does not fit").
_CHARS_PER_TOKEN = 3
Measure = Literal["words", "char3", "shape"]
_TOKEN = re.compile(r"\w+|[^\w\s]")


# The examples a batch group shares (``ExamplePool.choose_shared``), set by the batch around
# each of its documents' extraction: a context variable, so that the chain in between (cache,
# chunking, tiers) needs no parameter for it.
group_examples: ContextVar[tuple[Example, ...]] = ContextVar("group_examples", default=())


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b[k] for k, v in a.items() if k in b)
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def _shape(token: str) -> str:
    return re.sub(r"[a-z]+", "a", re.sub(r"[A-Z]+", "A", re.sub(r"\d+", "9", token)))


def _features(text: str, measure: Measure) -> Counter[str]:
    if measure == "char3":
        t = f"  {text.lower()} "
        return Counter(t[i:i + 3] for i in range(len(t) - 2))
    tokens = _TOKEN.findall(text.lower() if measure == "words" else text)
    if measure == "words":
        return Counter(tokens)
    # "shape": the words themselves and their shapes ("Apt 4B" -> "Aa 9A") and shape bigrams,
    # so an input with no word in common still finds examples laid out like it.
    shapes = [_shape(t) for t in tokens]
    feats = Counter(t.lower() for t in tokens)
    feats.update("#" + s for s in shapes)
    feats.update("#" + a + "_" + b for a, b in itertools.pairwise(shapes))
    return feats


def similarity(a: str, b: str, measure: Measure = "shape") -> float:
    """Cosine similarity of the two texts' feature counts (0..1)."""
    return _cosine(_features(a, measure), _features(b, measure))


def _ordered(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with top-level keys in the schema's order and empty values left out, as the
    constrained decoder writes them (the model imitates what it is shown)."""
    if not isinstance(value, dict):
        return value
    props = list((schema.get("properties") or {}).keys())
    keys = [k for k in props if k in value] + [k for k in value if k not in props]
    return {k: value[k] for k in keys if value[k] is not None}


def _answer(obj: Any, spec: Spec, where: str) -> str:
    if isinstance(obj, BaseModel):
        if spec.model is not None and not isinstance(obj, spec.model):
            raise ConfigError(f"{where} is a {type(obj).__name__}, not a {spec.model.__name__}")
        data = obj.model_dump(mode="json")
    else:
        data = obj
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: the answer is not JSON-serialisable: {exc}") from None
    _, error = validate_value(data, spec)
    if error is not None:
        raise ConfigError(f"{where} does not validate against {spec.name}: {error.message}")
    assert spec.schema is not None
    return json.dumps(_ordered(data, spec.schema), separators=(",", ":"), ensure_ascii=False)


def _budget_chars(n_ctx: int) -> int:
    """Examples may take at most half the context, leaving room for the task and the text."""
    return n_ctx // 2 * _CHARS_PER_TOKEN


def schema_examples(spec: Spec) -> list[Example]:
    """Examples carried in the schema (``json_schema_extra={"examples": [...]}`` on the model),
    validated once per spec (a bad one is a ``ConfigError`` naming its index).

    An entry ``{"text": ..., "value": {...}}`` is a worked pair; a bare instance becomes a pair
    whose text is its values in field order, so a schema author can show the answer's shape
    without writing a document.
    """
    return list(_schema_examples(spec))


@lru_cache(maxsize=256)
def _schema_examples(spec: Spec) -> tuple[Example, ...]:
    if spec.schema is None:
        return ()
    out = []
    props = spec.schema.get("properties") or {}
    for i, entry in enumerate(spec.schema.get("examples") or []):
        if isinstance(entry, dict) and set(entry) == {"text", "value"} and "value" not in props:
            text, value = entry["text"], entry["value"]
        else:
            value = entry
            text = " ".join(str(v) for v in (entry.values() if isinstance(entry, dict) else [entry])
                            if v is not None)
        if not isinstance(text, str) or not text.strip():
            continue
        out.append(Example(text, _answer(value, spec, f"schema example {i}"), -1))
    return tuple(out)


def shown_examples(spec: Spec, text: str, pool: ExamplePool | None) -> list[Example]:
    """Every worked example a prompt for ``text`` shows: the schema's own, then the pool's
    choice. Computed once per extraction and carried on the task."""
    return [*schema_examples(spec), *(pool.choose(text, spec, group_examples.get()) if pool is not None else [])]


class ExamplePool:
    """The user's (text, answer) pairs and how many to show per input.

    ``select="similar"`` shows the ``k`` most similar to the input (most similar last, next
    to the input); ``"fixed"`` shows the first ``k``, the same for every input, so they are
    part of the prompt prefix that every document shares (evaluated once, not per document).
    Either way the chosen examples must fit half the context: the least similar are left out
    until they do.

    ``group`` (``examples_group``, batches only): ``extract_many`` puts similar inputs in groups
    of this many (``groups``); the ``k - 1`` examples most like the group as a whole are shown
    to all of them (``choose_shared``), first, in the prefix the group shares, and each input
    adds the one example most like itself, last. A 6-example prompt is ~1,000 tokens that a
    2-core machine evaluates at ~230 tokens/s: shared by 8 documents, most of it is evaluated
    once per group instead of once per document (``benchmarks/throughput.py --group``).
    """

    def __init__(
        self,
        examples: Sequence[Any],
        k: int | None = None,
        *,
        select: Literal["similar", "fixed"] = "similar",
        measure: Measure = "shape",
        n_ctx: int = 4096,
        group: int = 1,
    ) -> None:
        if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
            raise ConfigError("examples must be a list of (text, answer) pairs")
        if not examples:
            raise ConfigError("examples is an empty list: give at least one (text, answer) pair, or leave it out")
        for i, pair in enumerate(examples):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ConfigError(f"examples[{i}] is not a (text, answer) pair")
            if not isinstance(pair[0], str) or not pair[0].strip():
                raise ConfigError(f"examples[{i}]: the text must be a non-empty str")
        if k is None:
            k = min(DEFAULT_K, len(examples))
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"examples_k must be an integer of at least 1, got {k!r}")
        if k > len(examples):
            raise ConfigError(f"examples_k={k} is larger than the pool of {len(examples)} examples")
        if select not in ("similar", "fixed"):
            raise ConfigError(f"examples_select must be 'similar' or 'fixed', got {select!r}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ConfigError(f"examples_group must be an integer of at least 1, got {group!r}")
        if group > 1 and (select != "similar" or k < 2):
            raise ConfigError("examples_group needs examples_select='similar' and examples_k of at least 2 "
                              "(a group shares k - 1 examples and each input adds its own most similar one; "
                              f"got select={select!r}, k={k})")
        self.raw = list(examples)
        self.k = k
        self.select = select
        self.measure: Measure = measure
        self.group = group
        self.budget = _budget_chars(n_ctx)
        self._prepared: dict[str, tuple[list[Example], list[Counter[str]]]] = {}

    def identity(self) -> dict[str, Any]:
        """What the result cache keys on: the pairs and how they are chosen (a batch group's
        shared examples too: the same input in another group is shown other examples)."""
        out: dict[str, Any] = {"raw": self.raw, "k": self.k, "select": self.select, "measure": self.measure}
        shared = group_examples.get()
        if shared:
            out["group"] = [ex.index for ex in shared]
        return out

    def prepare(self, spec: Spec) -> list[Example]:
        """The pool validated against ``spec`` (once per spec), or a ConfigError naming the example."""
        if spec.digest in self._prepared:
            return self._prepared[spec.digest][0]
        if not spec.is_json or spec.schema is None:
            raise ConfigError(f"examples need a JSON spec (a model or a JSON Schema), not a {spec.kind}")
        out = []
        for i, (text, obj) in enumerate(self.raw):
            ex = Example(text, _answer(obj, spec, f"examples[{i}]"), i)
            if ex.size > self.budget:
                raise ConfigError(
                    f"examples[{i}] is too long for the context: {ex.size} characters of text and answer, "
                    f"over the examples' budget of {self.budget} (half of n_ctx at ~{_CHARS_PER_TOKEN} "
                    "characters a token); shorten it or raise n_ctx"
                )
            out.append(ex)
        self._prepared[spec.digest] = (out, [_features(e.text, self.measure) for e in out])
        return out

    def largest(self, spec: Spec) -> list[Example]:
        """The largest choice ``choose`` can make (the ``k`` longest that fit the budget): what
        a chunk plan counts, since the choice depends on the chunk."""
        chosen: list[Example] = []
        used = 0
        for ex in sorted(self.prepare(spec), key=lambda e: (-e.size, e.index)):
            if len(chosen) == self.k:
                break
            if used + ex.size <= self.budget:
                chosen.append(ex)
                used += ex.size
        return chosen

    def _ranked(self, texts: Sequence[str], spec: Spec) -> list[int]:
        """Pool positions, most like ``texts`` first (summed similarity); the pool index breaks
        ties, so the choice is deterministic."""
        pool = self.prepare(spec)
        feats = self._prepared[spec.digest][1]
        queries = [_features(t, self.measure) for t in texts]
        scores = [sum(_cosine(q, feats[i]) for q in queries) for i in range(len(pool))]
        return sorted(range(len(pool)), key=lambda i: (-scores[i], i))

    def _fill(self, spec: Spec, ranked: Sequence[int], k: int, used: int = 0) -> list[Example]:
        """The first ``k`` of ``ranked`` that fit the budget with ``used`` characters taken."""
        pool = self.prepare(spec)
        chosen: list[Example] = []
        for i in ranked:
            if len(chosen) == k:
                break
            if used + pool[i].size <= self.budget:
                chosen.append(pool[i])
                used += pool[i].size
        return chosen

    def choose(self, text: str, spec: Spec, shared: Sequence[Example] = ()) -> list[Example]:
        """The examples to show for ``text``, in prompt order: with a group's ``shared``
        examples, those first and then the one most like ``text`` of the others."""
        if self.select == "fixed":
            every = self._fill(spec, range(len(self.prepare(spec))), self.k)
            return [dataclasses.replace(ex, scope="all") for ex in every]
        ranked = self._ranked([text], spec)
        if shared:
            taken = {ex.index for ex in shared}
            own = self._fill(spec, [i for i in ranked if i not in taken], self.k - len(shared),
                             sum(ex.size for ex in shared))
            return [*shared, *own[::-1]]
        # Most similar last: a small model leans hardest on the example nearest the input.
        return self._fill(spec, ranked, self.k)[::-1]

    def groups(self, texts: Sequence[str]) -> list[list[int]]:
        """Positions of ``texts`` in groups of at most ``group`` similar texts, in the order to
        run them: the first text not yet placed with the ``group - 1`` most like it of the rest
        (greedy, deterministic; ties go to the earlier text)."""
        feats = [_features(t, self.measure) for t in texts]
        left = list(range(len(texts)))
        out: list[list[int]] = []
        while left:
            seed = left.pop(0)
            near = sorted(left, key=lambda j: (-_cosine(feats[seed], feats[j]), j))[: self.group - 1]
            out.append([seed, *near])
            left = [j for j in left if j not in near]
        return out

    def choose_shared(self, texts: Sequence[str], spec: Spec) -> tuple[Example, ...]:
        """The ``k - 1`` examples most like the group ``texts`` as a whole, most similar last,
        marked ``scope="group"``: shown first to each of them, in the prefix they share."""
        chosen = self._fill(spec, self._ranked(texts, spec), self.k - 1)[::-1]
        return tuple(dataclasses.replace(ex, scope="group") for ex in chosen)
