"""The tier registry: name -> class. A new tier is one module and one line here.

Classes are imported lazily, so a chain that never uses Instructor never imports it. A tier
that talks to an endpoint (its class declares ``remote = True``) may be named
``tier@endpoint`` (``"native@backup"``): the endpoint is looked up in ``Settings.endpoints``,
so one chain can try a primary model and then a backup.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from extract.errors import ConfigError
from extract.settings import Settings
from extract.tiers.base import Spend, Task, Tier, split_tier_name

__all__ = ["REGISTRY", "Spend", "Task", "Tier", "make_tier", "split_tier_name", "tier_class"]


def _lazy(module: str, cls: str) -> Callable[[], type[Tier]]:
    def load() -> type[Tier]:
        tier_cls: type[Tier] = getattr(import_module(module), cls)
        return tier_cls

    return load


REGISTRY: dict[str, Callable[[], type[Tier]]] = {
    "native": _lazy("extract.tiers.native", "NativeTier"),
    "instructor": _lazy("extract.tiers.instructor", "InstructorTier"),
    "local": _lazy("extract.tiers.local", "LocalTier"),
    "repair": _lazy("extract.tiers.repair", "RepairTier"),
}


def tier_class(kind: str) -> type[Tier]:
    """The class registered as ``kind`` (``"native"``, not ``"native@backup"``)."""
    try:
        return REGISTRY[kind]()
    except KeyError:
        raise ConfigError(f"unknown tier {kind!r}; known tiers: {', '.join(REGISTRY)}") from None


def make_tier(name: str, settings: Settings) -> Tier:
    """The tier called ``name`` (``"local"``, ``"native"``, ``"native@backup"``...)."""
    kind, endpoint = split_tier_name(name)
    cls = tier_class(kind)
    if endpoint is None:
        return cls(settings)  # type: ignore[call-arg]
    if not cls.remote:
        remote = sorted(k for k in REGISTRY if tier_class(k).remote)
        raise ConfigError(
            f"tier {kind!r} does not talk to an endpoint, so {name!r} cannot name one "
            f"(tiers that can: {', '.join(remote)})"
        )
    if endpoint not in settings.endpoints and endpoint != "default":
        known = ", ".join(sorted(settings.endpoints)) or "none configured"
        raise ConfigError(
            f"tier {name!r} names endpoint {endpoint!r}, which is not in settings.endpoints "
            f"(known: {known}; set EXTRACT_ENDPOINTS or endpoints=)"
        )
    return cls(settings, endpoint)  # type: ignore[call-arg]
