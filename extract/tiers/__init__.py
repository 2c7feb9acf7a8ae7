"""The tier registry: name -> factory. A new tier is one module and one line here.

Factories import their module lazily, so a chain that never uses Instructor never imports it.
A tier that talks to an endpoint may be named ``tier@endpoint`` (``"native@backup"``): the
endpoint is looked up in ``Settings.endpoints``, so one chain can try a primary model and then
a backup. ``ENDPOINT_TIERS`` says which tiers take an endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from extract.errors import ConfigError
from extract.settings import Settings
from extract.tiers.base import Task, Tier

__all__ = ["ENDPOINT_TIERS", "REGISTRY", "Task", "Tier", "make_tier"]


def _lazy(module: str, cls: str) -> Callable[..., Tier]:
    def factory(settings: Settings, *args: str) -> Tier:
        tier: Tier = getattr(import_module(module), cls)(settings, *args)
        return tier

    return factory


REGISTRY: dict[str, Callable[..., Tier]] = {
    "native": _lazy("extract.tiers.native", "NativeTier"),
    "instructor": _lazy("extract.tiers.instructor", "InstructorTier"),
    "local": _lazy("extract.tiers.local", "LocalTier"),
    "repair": _lazy("extract.tiers.repair", "RepairTier"),
}


# Tiers whose constructor takes an endpoint name as its second argument.
ENDPOINT_TIERS = frozenset({"native", "instructor"})


def make_tier(name: str, settings: Settings) -> Tier:
    """The tier called ``name`` (``"local"``, ``"native"``, ``"native@backup"``...)."""
    base, at, endpoint = name.partition("@")
    try:
        factory = REGISTRY[base]
    except KeyError:
        raise ConfigError(
            f"unknown tier {base!r}; known tiers: {', '.join(REGISTRY)}"
        ) from None
    if not at:
        return factory(settings)
    if base not in ENDPOINT_TIERS:
        raise ConfigError(
            f"tier {base!r} does not talk to an endpoint, so {name!r} cannot name one "
            f"(tiers that can: {', '.join(sorted(ENDPOINT_TIERS))})"
        )
    if endpoint not in settings.endpoints and endpoint != "default":
        known = ", ".join(sorted(settings.endpoints)) or "none configured"
        raise ConfigError(
            f"tier {name!r} names endpoint {endpoint!r}, which is not in settings.endpoints "
            f"(known: {known}; set EXTRACT_ENDPOINTS or endpoints=)"
        )
    return factory(settings, endpoint)
