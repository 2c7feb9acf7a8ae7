"""CPU cost of one llama.cpp decode step, 1 token against 8 (one each of 8 sequences), per weight type.

    uv run --no-sync python benchmarks/step_cost.py [--types Q8_0,F16,BF16,Q4_0,Q5_0] [--out DIR]

Why: the batched engine (``extract/providers/batch_engine.py``) pays off only if a step holding
the next token of 8 sequences costs much less than 8 steps. llama.cpp's CPU backend multiplies
a batch by the weights with llamafile's tinyBLAS only for some weight types (F32, F16, BF16,
Q8_0, Q4_0, Q5_0, IQ4_NL on x86: ``ggml/src/ggml-cpu/llamafile/sgemm.cpp``); the embedded
model's layers are Q4_1, which falls back to one ``vec_dot`` per row and column. This converts
the embedded weights once with ``llama_model_quantize`` (``allow_requantize``; into ``--out``,
nothing downloaded) and times a step of each, loaded as the library loads them (extra buffer
types off: no AMX, no repacking), in a context shaped like the engine's (8 sequences, one KV
stream each, a 540-token prompt in every sequence).

The figure is the process's CPU time during ``llama_decode`` on one thread, the median of 25
steps: on 2 cores shared with other work the wall time moves with the neighbours' load.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FTYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "BF16": 32}
PROMPT_TOKENS = 540
SEQUENCES = 8


def convert(source: Path, name: str, out: Path) -> Path:
    """The embedded weights as ``name`` (made once)."""
    import llama_cpp

    target = out / f"{source.stem}.as-{name}.gguf"
    if not target.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[name]
        params.allow_requantize = True
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {name}")
    return target


def step_costs(path: Path, reps: int = 25) -> dict[str, float]:
    """Median CPU ms of a 1-token and an 8-sequence step on one thread."""
    import llama_cpp
    from llama_cpp import _internals

    from extract.providers.local_model import llama_load_params

    with llama_load_params(extra_buffers=False):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=1, n_threads_batch=2, seed=0,
                              verbose=False)
    assert not llm.model_params.use_extra_bufts  # the AMX-safe load, as the library does it
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx = 1024 * SEQUENCES
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = SEQUENCES
    params.kv_unified = False
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    mem = llama_cpp.llama_get_memory(ctx.ctx)
    batch: Any = llama_cpp.llama_batch_init(512, 0, 1)
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 60, add_bos=False)[:PROMPT_TOKENS]

    def decode(items: list[tuple[int, int, int]], threads: int) -> float:
        for i, (seq, pos, tok) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = True
        batch.n_tokens = len(items)
        llama_cpp.llama_set_n_threads(ctx.ctx, threads, threads)
        started = time.process_time()
        assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
        return (time.process_time() - started) * 1000

    for seq in range(SEQUENCES):
        for at in range(0, PROMPT_TOKENS, 256):
            decode([(seq, at + i, t) for i, t in enumerate(tokens[at: at + 256])], 2)
    times: dict[str, list[float]] = {"1 token": [], f"{SEQUENCES} sequences x 1 token": []}
    for _ in range(reps):
        for name, n in zip(times, (1, SEQUENCES), strict=True):
            times[name].append(decode([(seq, PROMPT_TOKENS, 42) for seq in range(n)], 1))
            for seq in range(n):
                llama_cpp.llama_memory_seq_rm(mem, seq, PROMPT_TOKENS, -1)
    llama_cpp.llama_batch_free(batch)
    ctx.close()  # type: ignore[no-untyped-call]
    llm.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="Q8_0,F16,BF16,Q4_0,Q5_0")
    parser.add_argument("--out", type=Path, default=Path("/tmp/extract-step-cost"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as extract.providers.local_model sets it
    from extract.providers.local_model import embedded_model_path

    args.out.mkdir(parents=True, exist_ok=True)
    source = embedded_model_path()
    paths = [("Q4_1 (shipped)", source)]
    paths += [(name, convert(source, name, args.out)) for name in args.types.split(",") if name]
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start\n")
    print("| layer weights | file MiB | 1 token, CPU ms | 8 sequences x 1 token, CPU ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, path in paths:
        one, eight = step_costs(path).values()
        mib = path.stat().st_size / 2**20
        print(f"| {name} | {mib:.0f} | {one:.1f} | {eight:.1f} | {eight / one:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
