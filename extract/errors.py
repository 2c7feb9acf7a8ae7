"""The exception tree, split by who must act.

``ExtractError`` is the one root. Its children say whose move it is:

- ``ConfigError``: the caller must fix an argument, a setting, a file path or an input
  (empty text, bytes that are not UTF-8, a model file that does not exist, a missing extra).
- ``UnsupportedSchema``: the caller must change the spec; it names the feature and the tier
  that cannot honour it, and is raised before any model call.
- ``ProviderError``: talking to a model failed; ``transient`` says whether trying again
  later can help, ``status`` and ``retry_after`` carry what the endpoint said. It names the
  endpoint, never the key.
- ``ExtractionFailed``: every tier ran and none produced a valid value; it carries the full
  ``Result`` with every attempt.

Bad model output is never an exception: it is an ``Attempt`` with an error. This module
imports nothing from the package but ``types`` (lazily, for annotations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from extract.types import Result

__all__ = [
    "ConfigError",
    "ExtractError",
    "ExtractionFailed",
    "ProviderError",
    "UnsupportedSchema",
]


class ExtractError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ExtractError, ValueError):
    """The caller must act: a bad argument, setting, input or missing optional dependency."""


class UnsupportedSchema(ExtractError, ValueError):
    """A spec uses a feature that a tier cannot honour.

    ``feature`` is the name from the capability table (e.g. ``"recursion"``), ``tier`` the
    tier that refused it and ``path`` where in the spec it was found (a JSON pointer).
    """

    def __init__(self, feature: str, tier: str, path: str = "", detail: str = "") -> None:
        self.feature = feature
        self.tier = tier
        self.path = path
        self.detail = detail
        where = f" at {path}" if path else ""
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"the {tier!r} tier does not support the schema feature {feature!r}{where}{extra}"
        )


class ProviderError(ExtractError):
    """Talking to a model failed.

    ``endpoint`` is a name or URL (never a key); ``transient`` says whether a retry later can
    help (429, 5xx, timeouts, cut connections) or not (400, 401, 403, a missing model file).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class ExtractionFailed(ExtractError):
    """No tier produced a valid value; ``result`` holds every attempt and its error."""

    def __init__(self, result: Result) -> None:
        self.result = result
        last = result.attempts[-1].error if result.attempts else None
        why = f"{last.type}: {last.message}" if last is not None else "no tier was run"
        super().__init__(
            f"extraction failed after {len(result.attempts)} attempt(s); last error: {why}"
        )
