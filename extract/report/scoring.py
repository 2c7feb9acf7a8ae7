"""Every score a benchmark or a report quotes, defined once.

Field accuracy, exact match, the intervals around a rate and the schema-corpus coverage of
JSONSchemaBench were computed three ways (the report, ``benchmarks/tiers.py``'s table,
``benchmarks/lists.py``): a figure from one could not be set beside a figure from another.
Every benchmark now imports these functions, so a definition changes here or nowhere.

The definitions:

- *scored gold*: only the labels the schema has a field for (``gold_for_schema``);
- *leaf fields*: an object's scalar values by path (``a.b``, ``a[0].b``); a list of scalars is
  one leaf; ``None``, ``""`` and ``[]`` are no value at all (an absent field);
- *normalisation* (the only one): lower-cased, edge punctuation trimmed, whitespace collapsed.
  The datasets' gold spans keep the text's punctuation (``"(1994)."``), answers do not;
- a predicted value *matches* a gold value after normalisation; a gold list holds alternatives
  (any one matches), a predicted list matches when it holds the same values as the gold list;
- *field counts* per item: a predicted leaf that matches the gold leaf at its path is a true
  positive, any other predicted leaf a false positive (wrong or extra), a gold leaf without a
  match a false negative (missed or wrong). A failed item predicts nothing;
- *field F1* is micro: the counts are summed over items, then ``2tp / (2tp + fp + fn)``;
  *exact match*: an item with no false positive and no false negative;
- intervals are 95%: Wilson's score interval for a proportion (it stays inside [0, 1] and is
  honest at n = 5, where the normal approximation is not), and a percentile bootstrap over
  items, seeded, for a statistic of items such as field F1 (items are resampled, not fields:
  the fields of one record are not independent);
- *compile coverage* (JSONSchemaBench's "declared coverage"): the share of schemas some tier
  accepted; *empirical coverage*: the share of all schemas, refusals included, for which an
  instance came back that validates against the *full* schema with ``jsonschema``
  (``instance_valid``), the definition of ``epfl-dlab/jsonschemabench``'s ``core/evaluator.py``.

This module imports only the standard library (``jsonschema`` when a schema is checked).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "FieldCounts",
    "bootstrap_interval",
    "field_counts",
    "field_path",
    "field_tally",
    "gold_for_schema",
    "instance_valid",
    "leaves",
    "matches",
    "normalise",
    "wilson_interval",
]

_EDGE = re.compile(r"^[\W_]+|[\W_]+$")
_SPACE = re.compile(r"\s+")
_INDEX = re.compile(r"\[\d+\]")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 1000
T = TypeVar("T")


def normalise(value: Any) -> str:
    """Case, whitespace and edge punctuation do not count against a value."""
    return _SPACE.sub(" ", _EDGE.sub("", str(value).lower())).strip()


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf fields as ``path -> value``; a list of scalars is one leaf, empty values are dropped."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, sub in value.items():
            out.update(leaves(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, sub in enumerate(value):
            out.update(leaves(sub, f"{prefix}[{i}]"))
    elif value is not None and value != "" and value != []:
        out[prefix] = value
    return out


def matches(predicted: Any, gold: Any) -> bool:
    """A scalar matches a gold scalar or any of a gold list's values (the datasets' alternatives);
    a predicted list matches when it holds the same values as the gold."""
    options = gold if isinstance(gold, list) else [gold]
    wanted = {normalise(o) for o in options}
    if isinstance(predicted, list):
        return {normalise(p) for p in predicted} == wanted
    return normalise(predicted) in wanted


def gold_for_schema(gold: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The gold labels a schema has fields for, under the schema's names: labels it has no field
    for (usaddress's ``Recipient``) are not scored, and the datasets' ``container-title`` is the
    schema's ``container_title``. Empty when no label is in the schema (the wrong schema)."""
    by_name = {f.replace("-", "_"): f for f in fields}
    return {by_name[k.replace("-", "_")]: v for k, v in gold.items() if k.replace("-", "_") in by_name}


def field_path(path: str) -> str:
    """A leaf path with list positions dropped (``authors[2].name`` -> ``authors[].name``): the
    field a per-field table counts under."""
    return _INDEX.sub("[]", path)


def field_tally(predicted: Any, gold: Any) -> dict[str, tuple[int, int, int]]:
    """Per leaf path: (true positive, false positive, false negative), each 0 or 1."""
    pred = leaves(predicted) if predicted is not None else {}
    want = leaves(gold) if gold is not None else {}
    out: dict[str, tuple[int, int, int]] = {}
    for path in pred.keys() | want.keys():
        right = path in pred and path in want and matches(pred[path], want[path])
        out[path] = (int(right), int(path in pred and not right), int(path in want and not right))
    return out


def field_counts(predicted: Any, gold: Any) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) over leaf fields."""
    tp = fp = fn = 0
    for a, b, c in field_tally(predicted, gold).values():
        tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn


@dataclass(frozen=True)
class FieldCounts:
    """Summed field counts, and the figures read from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @classmethod
    def total(cls, counts: Iterable[tuple[int, int, int]]) -> FieldCounts:
        tp = fp = fn = 0
        for a, b, c in counts:
            tp, fp, fn = tp + a, fp + b, fn + c
        return cls(tp, fp, fn)

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        """Micro F1; None when nothing was predicted and nothing was wanted (no score at all)."""
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else None

    @property
    def exact(self) -> bool:
        return self.fp == 0 and self.fn == 0


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for ``k`` successes in ``n``; None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    items: Sequence[T],
    statistic: Callable[[Sequence[T]], float | None],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of ``statistic`` over ``items`` resampled with replacement.

    Seeded, so a report rebuilt from the same rows prints the same interval. A resample where
    the statistic is undefined (None: no valid result in it, say) is left out; None when fewer
    than half of the resamples give a value, or there are no items.
    """
    if not items:
        return None
    rng = random.Random(seed)
    n = len(items)
    values: list[float] = []
    for _ in range(resamples):
        value = statistic([items[rng.randrange(n)] for _ in range(n)])
        if value is not None:
            values.append(value)
    if len(values) < resamples / 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    lo = values[min(len(values) - 1, max(0, math.floor(tail * len(values))))]
    hi = values[min(len(values) - 1, max(0, math.ceil((1 - tail) * len(values)) - 1))]
    return lo, hi


class _Offline:
    """A ``referencing`` registry that never fetches: jsonschema's default retrieves a remote
    ``$ref`` over HTTP (a benchmark must not reach the network, nor depend on it). A schema
    whose instance needs a remote document is not validated: that counts as not covered."""

    def registry(self) -> Any:
        from jsonschema_specifications import REGISTRY as SPECIFICATIONS
        from referencing import Registry
        from referencing.exceptions import NoSuchResource

        def refuse(uri: str) -> Any:
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

        # The drafts' own meta-schemas stay resolvable, as in jsonschema's default.
        return SPECIFICATIONS.combine(Registry(retrieve=refuse))  # type: ignore[call-arg]


_OFFLINE = _Offline()


def instance_valid(instance: Any, schema: Any) -> bool:
    """Whether ``instance`` validates against the whole ``schema`` (its own ``$schema`` draft,
    2020-12 when it names none, formats checked), as JSONSchemaBench's evaluator decides it,
    except that a remote ``$ref`` is never fetched. A schema that is itself invalid, or whose
    remote references cannot be resolved offline, validates nothing."""
    import jsonschema
    from jsonschema.validators import validator_for

    if not isinstance(schema, (Mapping, bool)):
        return False
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER, registry=_OFFLINE.registry())
        return bool(validator.is_valid(instance))
    except Exception:  # a schema error, an unresolvable $ref: not a valid instance, as theirs
        return False
