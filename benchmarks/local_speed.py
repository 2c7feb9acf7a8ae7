"""Local-tier speed: constrained vs unconstrained tokens/s, compile time, peak RSS.

Run: ``uv run python benchmarks/local_speed.py [--backend llamacpp|transformers|all] [--n 20]``

Prompts are the extraction prompts for the first N usaddress records with the shipped
Address schema. For each prompt the constrained run goes first; the unconstrained run is then
given exactly as many tokens, so both decode the same number of tokens from the same prompt.
Each backend runs in its own process so its peak RSS is its own. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = REPO.parent / "shared" / "data" / "usaddress" / "dev.jsonl"


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(backend: str, n: int, decoder: str) -> dict[str, object]:
    from extract.examples import schema_examples
    from extract.providers.decoding import clear_compiled_grammars
    from extract.providers.local_model import Constraint, load_local_model
    from extract.settings import Settings
    from extract.spec import compile_spec, local_constraint
    from extract.spec.compile import clear_constraint_cache
    from extract.spec.prompt import build_messages
    from schemas.address import Address
    from schemas.citation import Citation
    from schemas.invoice import Invoice
    from schemas.snips import INTENT_MODELS

    settings = Settings.resolve(backend=backend, decoder=decoder)
    t0 = time.perf_counter()
    model = load_local_model(settings)
    load_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in DATA.open(encoding="utf-8")][:n]
    spec = compile_spec(Address)

    # Compile: cold = a spec never seen (caches cleared), warm = the cached path a second
    # extraction takes (constraint + grammar lookups and a fresh matcher).
    import llguidance

    tokenizer = getattr(model, "llg_tokenizer", None) or model._backend.llg_tokenizer  # type: ignore[attr-defined]
    specs = [Address, Citation, Invoice, *INTENT_MODELS.values()]
    cold, warm = [], []
    for s in specs:
        clear_constraint_cache()
        clear_compiled_grammars()
        t = time.perf_counter()
        g = Constraint("json_schema", local_constraint(compile_spec(s), "x" * 40))
        llguidance.LLMatcher(tokenizer, g.compile())
        cold.append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            g = Constraint("json_schema", local_constraint(compile_spec(s), "x" * 40))
            llguidance.LLMatcher(tokenizer, g.compile())
            warm.append(time.perf_counter() - t)

    prompts = [model.render(build_messages(spec, r["text"], schema_examples(spec))) for r in rows]
    grammars = [Constraint("json_schema", local_constraint(spec, r["text"])) for r in rows]
    model.generate(prompts[0], grammars[0], 64)  # warm-up: first decode allocates buffers

    def run(constrained: bool, ff: bool = True) -> tuple[int, float, list[int]]:
        if hasattr(model, "fast_forward"):
            model.fast_forward = ff  # type: ignore[attr-defined]
        toks, secs, counts = 0, 0.0, []
        for prompt, grammar, budget in zip(prompts, grammars, budgets, strict=True):
            # Evaluate the prompt first so both runs time decoding only.
            model.generate(prompt, None, 1)
            gen = model.generate(prompt, grammar if constrained else None, budget)
            toks += gen.output_tokens
            secs += gen.seconds
            counts.append(gen.output_tokens)
        return toks, secs, counts

    budgets = [512] * len(prompts)
    c_toks, c_secs, counts = run(True)
    budgets = counts  # the unconstrained run decodes exactly as many tokens
    u_toks, u_secs, _ = run(False)
    out: dict[str, object] = {
        "backend": backend,
        "decoder": decoder if backend == "llamacpp" else "outlines",
        "records": len(rows),
        "load_s": round(load_s, 2),
        "constrained_tok_s": round(c_toks / c_secs, 1),
        "unconstrained_tok_s": round(u_toks / u_secs, 1),
        "ratio": round((c_toks / c_secs) / (u_toks / u_secs), 2),
        "tokens": c_toks,
        "compile_cold_p50_ms": round(1000 * p50(cold), 1),
        "compile_warm_p50_ms": round(1000 * p50(warm), 2),
    }
    if backend == "llamacpp" and decoder == "fast":
        budgets = counts
        n_toks, n_secs, _ = run(True, ff=False)
        out["constrained_no_ff_tok_s"] = round(n_toks / n_secs, 1)
        out["ratio_no_ff"] = round((n_toks / n_secs) / (u_toks / u_secs), 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="all", choices=["llamacpp", "transformers", "all"])
    ap.add_argument("--decoder", default=None, choices=["fast", "outlines"])
    ap.add_argument("--n", type=int, default=20, help="usaddress records (default 20)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (used internally)")
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.backend, args.n, args.decoder or "fast")))
        return
    runs = []
    if args.backend in ("llamacpp", "all"):
        runs += [("llamacpp", d) for d in ([args.decoder] if args.decoder else ["fast", "outlines"])]
    if args.backend in ("transformers", "all"):
        runs.append(("transformers", "outlines"))
    rows = []
    for backend, decoder in runs:
        n = args.n if backend == "llamacpp" else min(args.n, 5)
        proc = subprocess.run(
            [sys.executable, __file__, "--json", "--backend", backend, "--decoder", decoder, "--n", str(n)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            print(f"{backend}/{decoder}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cols = ["backend", "decoder", "records", "load_s", "constrained_tok_s", "unconstrained_tok_s", "ratio",
            "constrained_no_ff_tok_s", "ratio_no_ff", "compile_cold_p50_ms", "compile_warm_p50_ms",
            "peak_rss_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
