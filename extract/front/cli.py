"""The ``extract`` command: a thin typer layer over the public API, no logic of its own.

stdout carries only results (JSON); messages go to stderr, among them, for one text, the values
to doubt (``extract.report.review.review_note``, threshold ``REVIEW_BELOW``). Exit codes: 0 success,
1 extraction failed, 2 the caller must act (bad input, spec or setting).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from extract.errors import ConfigError, ExtractError, ExtractionFailed, UnsupportedSchema
from extract.pipeline import Extractor
from extract.settings import Settings
from extract.spec import Regex

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

REVIEW_BELOW = 0.5
"""``run`` on one text marks values under this confidence for review, and lists them on stderr,
when neither ``--review-below`` nor ``EXTRACT_REVIEW_BELOW`` says otherwise.

Why a default at all: the first command a user runs should say which values to doubt without
their knowing that a flag exists. Why 0.5 (the model gives the value less than even odds),
measured on the 200 usaddress dev records of ``benchmarks/results/grounding/`` (shipped
``Address``, raw confidences; the current code reproduces the first 40 of them value for value):
zero-shot, 85% of the values under 0.5 are wrong (662 of 782) and they are 62% of the wrong
values, at 18% of the right ones; 0.6 catches 73% of the wrong values but marks 35% of the right
ones. With six worked examples (``usaddress-sim6.jsonl``), 67% of the marked values are wrong and
5% of the right ones are marked. It does not separate well enough to trust the rest: zero-shot,
42% of the values at or above 0.5 are wrong, and the note says so (README, "Grounded values,
confidence and review", counts the zero-shot figures). Only for one text: a batch's rows and the
Python API keep ``review_below=None`` unless asked, since the number was chosen on addresses with
the 135M model and is a prompt to a person reading one answer, not a fact about every schema.
"""


def load_spec(schema: str | None, regex: str | None) -> Any:
    """``module:Class`` from the Python path (cwd first), a JSON Schema file, or a Regex."""
    if (schema is None) == (regex is None):
        raise ConfigError("give exactly one of --schema module:Class|schema.json or --regex PATTERN")
    if regex is not None:
        return Regex(regex)
    assert schema is not None
    path = Path(schema)
    if schema.endswith(".json"):
        if not path.is_file():
            raise ConfigError(f"schema file {schema} does not exist")
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{schema} is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{schema} does not hold a JSON Schema object")
        return loaded
    if ":" not in schema:
        raise ConfigError(f"--schema {schema!r}: expected module:Class or a .json file")
    module_name, _, attr = schema.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--schema {schema!r}: cannot import {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"--schema {schema!r}: {module_name} has no attribute {attr!r}") from None
    return obj


def load_examples(path: Path) -> list[tuple[str, Any]]:
    """(text, answer) pairs from a JSONL file of ``{"text": ..., "value": {...}}`` rows.

    A row that is not such an object is named by its line; whether each answer fits the
    spec is the Extractor's check (it names the example's index).
    """
    if not path.is_file():
        raise ConfigError(f"examples file {path} does not exist")
    pairs: list[tuple[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "value" not in row:
            raise ConfigError(f'{path}:{n}: expected an object {{"text": "...", "value": {{...}}}}')
        pairs.append((row["text"], row["value"]))
    if not pairs:
        raise ConfigError(f"examples file {path} holds no examples")
    return pairs


def _read_input(source: str) -> str | bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"input file {source} does not exist")
    return path.read_bytes()


def _fail(exc: Exception, code: int) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """The commands' one error mapping: caller mistakes exit 2, a failed extraction 1, message only."""
    try:
        yield
    except (ConfigError, UnsupportedSchema) as exc:
        _fail(exc, 2)
    except ExtractError as exc:
        _fail(exc, 1)


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="A text file, or - for stdin.")] = "-",
    schema: Annotated[str | None, typer.Option(help="module:Class or a JSON Schema file.")] = None,
    regex: Annotated[str | None, typer.Option(help="A regular expression the whole output must match.")] = None,
    tier: Annotated[list[str] | None, typer.Option(help="A tier to run, in order (repeat for a chain).")] = None,
    model_path: Annotated[Path | None, typer.Option(help="A GGUF file or model directory.")] = None,
    backend: Annotated[str | None, typer.Option(help="llamacpp (default) or transformers.")] = None,
    result: Annotated[bool, typer.Option("--result", help="Print the whole Result with attempts.")] = False,
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="A batch: JSONL rows {id, text} (or plain text lines, ids = line numbers).")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Where the batch's rows go, each as it finishes; a rerun skips the ids in it.")] = None,
    concurrency: Annotated[int, typer.Option(help="Batch: extractions in flight at once.")] = 4,
    rate_limit: Annotated[float | None, typer.Option(help="Batch: extraction starts per second.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the result cache.")] = False,
    examples: Annotated[Path | None, typer.Option(
        help="Worked examples: JSONL rows {text, value}; the most similar are shown to the model.")] = None,
    examples_k: Annotated[int | None, typer.Option(help="How many examples to show per text (default 6).")] = None,
    html_page: Annotated[Path | None, typer.Option(
        "--html", help="Also write a review page: the text with each value highlighted at its spans.")] = None,
    review_below: Annotated[float | None, typer.Option(
        help="Mark values whose confidence is below this (0..1) for review; for one text they are "
        f"listed on stderr (default {REVIEW_BELOW}, or EXTRACT_REVIEW_BELOW).")] = None,
    all_items: Annotated[bool, typer.Option(
        "--all", help="Every item of the text (--schema is ONE item): a JSON line per item as it is found; "
        "a batch row holds its document's list.")] = False,
    passes: Annotated[int, typer.Option(help="--all: readings of the text (2: again, found items blanked).")] = 1,
    split: Annotated[str, typer.Option(help="--all: read line by line (lines) or in token chunks (chunks).")] = "lines",
) -> None:
    """Extract one value from a text and print it as JSON; or a whole JSONL batch, resumably."""
    with _exit_codes():
        if html_page is not None:
            _check_page_path(html_page)
            if input_file is not None or output_file is not None:
                raise ConfigError("--html is for one text; for a batch run `extract review OUTPUT --input INPUT`")
            if all_items:
                raise ConfigError("--html is for one value; --all prints items with their spans instead")
        spec = load_spec(schema, regex)
        pool = load_examples(examples) if examples is not None else None
        one_text = input_file is None and output_file is None and not all_items
        if one_text and review_below is None:  # the environment wins over this default, the flag over both
            review_below = Settings.resolve().review_below
            review_below = REVIEW_BELOW if review_below is None else review_below
        extractor = Extractor(tiers=tier or None, model_path=model_path, backend=backend,
                              cache=False if no_cache else None, examples=pool, examples_k=examples_k,
                              review_below=review_below)
        if input_file is not None or output_file is not None:
            _run_batch(source, input_file, output_file, spec, extractor, concurrency, rate_limit, all_items)
            return
        if all_items:
            _run_all(extractor, _read_input(source), spec, passes, split, result)
            return
        text = _read_input(source)
        res = extractor.run(text, spec)
        if html_page is not None:
            from extract.report.review import doc_from_result, render_review

            shown = text.decode("utf-8") if isinstance(text, bytes) else text
            render_review([doc_from_result(source, shown, res)], html_page)
            print(f"review page: {html_page}", file=sys.stderr)
        from extract.report.review import review_note

        for line in review_note(res, review_below):
            print(line, file=sys.stderr)
    if result:
        typer.echo(json.dumps(res.to_json_dict(), ensure_ascii=False, indent=2))
    if not res.ok:
        if not result:
            _fail(ExtractionFailed(res), 1)
        raise typer.Exit(1)
    if not result:
        typer.echo(json.dumps(res.to_json_dict()["value"], ensure_ascii=False))


@app.command()
def check(
    target: Annotated[str, typer.Argument(help="module:Class, a JSON Schema file, or a .lark grammar.")],
    tier: Annotated[list[str] | None, typer.Option(
        "--tier", "--tiers", help="A configured tier (repeat; default: the chain `run` would use).")] = None,
    input_chars: Annotated[int, typer.Option(help="Input length to size the budgets for.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Which tiers can honour a spec and what will go wrong, before any model call.

    Exit 0 when a configured tier can run it, 1 when none can, 2 when the target is not a spec.
    """
    from extract.front.authoring import check_spec

    try:
        spec = target if target.endswith(".lark") else load_spec(target, None)
        report = check_spec(spec, tiers=tier or None, input_chars=input_chars, source=target)
    except (ConfigError, UnsupportedSchema) as exc:
        _fail(exc, 2)
        return
    typer.echo(json.dumps(report.to_json_dict(), ensure_ascii=False, indent=2) if as_json else report.render())
    raise typer.Exit(report.exit_code)


def _run_all(extractor: Extractor, text: str | bytes, item: Any, passes: int, split: str, whole: bool) -> None:
    """One JSON line per item as it is found; the Result (``--result``) or the failed spans after."""
    from extract.pipeline import iter_sync

    if split not in ("lines", "chunks"):
        raise ConfigError(f"--split must be lines or chunks, got {split!r}")
    run = extractor.item_run(text, item, passes=passes, split="lines" if split == "lines" else "chunks")
    for value in iter_sync(run.stream()):
        if not whole:
            dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            typer.echo(json.dumps(dumped, ensure_ascii=False))
    res = run.result()
    if whole:
        typer.echo(json.dumps(res.to_json_dict(), ensure_ascii=False, indent=2))
    if not res.ok:
        raise ExtractionFailed(res)
    failed = [e for e in res.items if e["status"] == "failed"]
    if failed:
        where = ", ".join(f"[{e['start']}:{e['end']}] {e.get('error', {}).get('type', '')}" for e in failed[:5])
        _fail(ExtractError(f"{len(failed)} span(s) of the text could not be read: {where}"), 1)


def _run_batch(source: str, input_file: Path | None, output_file: Path | None, spec: Any, extractor: Extractor,
               concurrency: int, rate_limit: float | None, all_items: bool = False) -> None:
    from extract.front.batch import run_jsonl

    if input_file is None or output_file is None:
        raise ConfigError("a batch needs both --input FILE.jsonl and --output FILE.jsonl")
    if source != "-":
        raise ConfigError(f"give either a text file ({source}) or --input, not both")
    stats = run_jsonl(input_file, output_file, spec, extractor, concurrency=concurrency, rate_limit=rate_limit,
                      all_items=all_items)
    typer.echo(json.dumps(stats.to_json(), ensure_ascii=False))
    if stats.failed:
        raise typer.Exit(1)


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="A GGUF file (default: the embedded model).")] = None,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port (0: a free one).")] = 8765,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for generation and prompt evaluation (default: half the cores).")] = None,
    extra_buffers: Annotated[bool | None, typer.Option(
        "--extra-buffers/--no-extra-buffers",
        help="llama.cpp's extra weight buffer types (CPU repack, AMX): off unless set here or by "
        "EXTRACT_EXTRA_BUFFERS; on risks a crash on AMX CPUs.")] = None,
) -> None:
    """Serve a GGUF model on an OpenAI-compatible endpoint (llama-cpp-python's server)."""
    from extract.providers.server import serve as run_server
    from extract.settings import Settings

    with _exit_codes():
        settings = Settings.resolve(extra_buffers=extra_buffers, n_threads=threads)
        run_server(model, host, port, n_threads=settings.n_threads, extra_buffers=settings.extra_buffers)


def _invocation() -> str:
    """The command line that ran this command, as a user would type it again.

    ``sys.argv`` is that line only when the ``extract`` script (or ``python -m extract``) runs;
    called in-process (a test's CliRunner, a notebook) the line is rebuilt from the parsed
    options, so a result folder never records pytest's own arguments as its command.
    """
    import click

    script = Path(sys.argv[0])
    if script.name == "extract" or (script.name == "__main__.py" and script.parent.name == "extract"):
        return shlex.join(["extract", *sys.argv[1:]])
    ctx = click.get_current_context()
    words = ["extract", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or value == () or value == [] or not isinstance(param, click.Option):
            if isinstance(param, click.Argument) and value not in (None, (), []):
                words += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            continue
        flag = param.opts[0]
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                words += [flag, str(v)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Output folder: attempts.jsonl, summary.json, report.*, plots.")],
    data: Annotated[Path | None, typer.Option(help="JSONL: {id, text, gold} or {id, schema} rows.")] = None,
    schema: Annotated[str | None, typer.Option(help="module:Class or a JSON Schema file (extraction rows).")] = None,
    policy: Annotated[list[str] | None, typer.Option(help="native, instructor, local, repair, chain.")] = None,
    suite: Annotated[Path | None, typer.Option(help="A suite file of [[run]] tables instead of --data.")] = None,
    sample: Annotated[int | None, typer.Option(help="Run N rows per data set, drawn with --seed.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --sample draw.")] = 0,
    where: Annotated[list[str] | None, typer.Option(help="Keep rows whose FIELD equals VALUE (FIELD=VALUE).")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint for the remote tiers.")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Start the embedded llama.cpp server for the run.")] = False,
    max_tokens: Annotated[int | None, typer.Option(help="Output token cap per call.")] = None,
    fit_calibration: Annotated[Path | None, typer.Option(
        "--fit-calibration", help="Also fit a calibration on the local tier's values against gold and write "
        "it here (for Extractor(calibration=...)); needs one run with --schema.")] = None,
) -> None:
    """Benchmark policies on labelled data or a schema corpus; resumable; writes a report."""
    from extract.front.bench import BenchRun, read_suite, run_bench
    from extract.front.bench import fit_calibration as fit

    with _exit_codes():
        if (suite is None) == (data is None):
            raise ConfigError("give exactly one of --data FILE.jsonl or --suite FILE.toml")
        bad_where = [w for w in where or [] if "=" not in w]
        if bad_where:
            raise ConfigError(f"--where {bad_where[0]!r}: expected FIELD=VALUE")
        filters = dict(w.partition("=")[::2] for w in where or [])
        if suite is not None:
            runs = [
                BenchRun(data=Path(r["data"]), schema=r.get("schema"),
                         spec=load_spec(r["schema"], None) if r.get("schema") else None,
                         policies=list(policy or r.get("policies") or ["local"]),
                         where={**{str(k): str(v) for k, v in (r.get("where") or {}).items()}, **filters},
                         max_tokens=max_tokens or r.get("max_tokens"))
                for r in read_suite(suite)
            ]
        else:
            assert data is not None
            runs = [BenchRun(data=data, schema=schema, spec=load_spec(schema, None) if schema else None,
                             policies=list(policy or []), where=filters, max_tokens=max_tokens)]
        if fit_calibration is not None and not fit_calibration.parent.is_dir():
            raise ConfigError(f"cannot write the calibration to {fit_calibration}: "
                              f"folder {fit_calibration.parent} does not exist")
        command = _invocation()
        summary = run_bench(runs, out, sample=sample, seed=seed, base_url=base_url, serve=serve, command=command)
        if fit_calibration is not None:
            cal = fit(out, runs, fit_calibration)
            print(f"calibration: {fit_calibration} ({cal.fitted_on['values']} values)", file=sys.stderr)
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A bench output folder (with attempts.jsonl).")],
    merge: Annotated[list[Path] | None, typer.Option(
        help="Join this folder's run (a part run apart, same --sample/--seed) into FOLDER first; repeatable.")] = None,
) -> None:
    """Re-render summary.json, report.md, the plots and report.html from attempts.jsonl."""
    from extract.front.bench import merge_parts, render_current

    with _exit_codes():
        for part in merge or []:
            if not (part / "attempts.jsonl").is_file():
                raise ConfigError(f"--merge {part}: no attempts.jsonl there")
        if merge:
            added = merge_parts(folder, merge)
            typer.echo(f"merged {added} items from {len(merge)} folder(s)", err=True)
        if not (folder / "attempts.jsonl").is_file():
            raise ConfigError(f"{folder} has no attempts.jsonl")
        summary = render_current(folder)
    from extract.report.render import provenance_lines, stale_text

    prov = summary["provenance"]
    for line in provenance_lines(prov):
        typer.echo(line, err=True)
    stale = stale_text(prov, None)
    if stale:
        typer.echo(stale, err=True)
    typer.echo(str(folder / "report.html"))


def _check_page_path(page: Path) -> None:
    """A page path whose folder exists: said before any model runs, not after."""
    if not page.parent.is_dir():
        raise ConfigError(f"cannot write the review page {page}: folder {page.parent} does not exist")


@app.command()
def review(
    folder: Annotated[Path, typer.Argument(help="A bench output folder (attempts.jsonl) or a batch output JSONL.")],
    out: Annotated[Path | None, typer.Option("--out", help="The page to write (default: FOLDER/review.html).")] = None,
    input_file: Annotated[Path | None, typer.Option(
        "--input", help="Batch output: the input JSONL ({id, text}) the texts come from.")] = None,
) -> None:
    """Write one self-contained HTML page: every document's text with each value highlighted."""
    from extract.report import load_rows
    from extract.report.review import docs_from_rows, render_review

    with _exit_codes():
        rows_path = folder / "attempts.jsonl" if folder.is_dir() else folder
        if not rows_path.is_file():
            raise ConfigError(f"{folder} is neither a bench output folder (with attempts.jsonl) nor a JSONL file")
        page = out or (folder / "review.html" if folder.is_dir() else folder.with_suffix(".review.html"))
        _check_page_path(page)
        texts: dict[str, str] = {}
        if input_file is not None:
            from extract.front.batch import read_inputs

            texts = {str(i): t for i, t in read_inputs(input_file) if isinstance(t, str)}
        docs = docs_from_rows(load_rows(rows_path), texts=texts, base=folder if folder.is_dir() else folder.parent)
        if not docs:
            raise ConfigError(f"{rows_path} holds no results to review")
        render_review(docs, page, title=f"Extraction review: {folder.name}")
    typer.echo(str(page))


def main() -> None:  # pragma: no cover - console entry point
    app()
