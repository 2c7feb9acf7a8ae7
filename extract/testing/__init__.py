"""Real fakes for tests, the benchmark and batch runs: things that run, not mocks.

``FaultProxy`` starts the fault-injecting HTTP proxy (``extract.testing.fault_proxy``) as its
own process. Names are loaded lazily: ``python -m extract.testing.fault_proxy`` must not find
its own module already imported by this package (runpy warns, and the module would run twice).
Nothing in the library proper imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAULT_KINDS", "REJECTABLE", "FaultProxy", "ProxyConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from extract.testing import fault_proxy

        return getattr(fault_proxy, name)
    raise AttributeError(f"module 'extract.testing' has no attribute {name!r}")
