"""One in-memory OpenTelemetry SDK exporter for the test session (the package uses the API only).

``tests/conftest.py`` sets ``OTEL_SDK_DISABLED=true`` so that no other test pays for spans; the
SDK's ``TracerProvider`` reads it once, when built, so it is lifted for that moment only. The
global provider can be set once per process, hence one exporter shared by every test that
reads spans (each clears it first).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["span_exporter", "span_text"]

_EXPORTER: list[InMemorySpanExporter] = []


def span_exporter() -> InMemorySpanExporter:
    """The session's exporter, installing the global tracer provider on first use."""
    if not _EXPORTER:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            raise RuntimeError("a tracer provider is already set: the exporter would see nothing")
        saved = os.environ.pop("OTEL_SDK_DISABLED", None)
        try:
            provider = TracerProvider()
        finally:
            if saved is not None:
                os.environ["OTEL_SDK_DISABLED"] = saved
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _EXPORTER.append(exporter)
    _EXPORTER[0].clear()
    return _EXPORTER[0]


def span_text(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> str:
    """Everything a trace backend would store for these spans, as one string to grep."""
    return "\n".join(span.to_json() for span in spans)
