"""`tunefleet compile` and `tunefleet run`: make a compiled model from the records, run it.

    tunefleet compile --model MODEL --target cpu|cuda [--db URL] [--redis URL] --out DIR
                      [--buckets ...] [--quant none|q4] [--json]
    tunefleet run DIR [--weights PATH | --random-weights] [--prompt-len N] [--gen N]
                  [--batch B] [--threads T] [--check] [--json]

Environment variables (TUNEFLEET_DB_URL, TUNEFLEET_REDIS_URL, TUNEFLEET_CACHE_DIR) are read
here and nowhere deeper.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any

import click
import numpy as np

from tunefleet.coordinator.buckets import DimSpecError, parse_assignments
from tunefleet.coordinator.graph import Quant
from tunefleet.coordinator.job_cli import open_fleet
from tunefleet.coordinator.models import ModelConfigError
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.ray_jobs import REDIS_ENV_VAR
from tunefleet.database.cli import db_option, open_store
from tunefleet.ir.dtypes import to_float32
from tunefleet.runtime.best_lookup import BestLookup
from tunefleet.runtime.compile import CompileOptions, compile_model
from tunefleet.runtime.engine import effective_weights, load_model
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import Manifest, read_manifest
from tunefleet.runtime.reference import ReferenceModel
from tunefleet.runtime.weights import load_weights, random_weights
from tunefleet.workers.builder import BuildConfig
from tunefleet.workers.targets import TargetError, TargetKind, resolve_target

CHECK_TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}  # max_rel_err limits


def _cache_dir() -> str:
    return os.environ.get("TUNEFLEET_CACHE_DIR") or os.path.expanduser(
        "~/.cache/tunefleet/kernels"
    )


@click.command(name="compile")
@click.option("--model", "model_spec", required=True, metavar="NAME|PATH",
              help="A preset or a config.json (or a folder holding one).")  # fmt: skip
@click.option("--target", type=click.Choice([k.value for k in TargetKind]), default="cpu",
              show_default=True)  # fmt: skip
@db_option
@click.option("--redis", "redis_url", metavar="URL", envvar=REDIS_ENV_VAR,
              help="Read the best records through this Redis best-schedule cache "
              "(redis://[:password@]host:port/db) and fill it; without it, the database "
              "alone.")  # fmt: skip
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the compiled model into.")  # fmt: skip
@click.option("--buckets", "bucket_spec", default="", metavar="DIM=V:V,...",
              help="Bucket values, as the model was tuned with (tune --set).")  # fmt: skip
@click.option("--quant", type=click.Choice([q.value for q in Quant]), default="none",
              show_default=True)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the coverage as JSON.")
def compile_cmd(model_spec: str, target: str, db_url: str | None, redis_url: str | None,
                out_dir: str, bucket_spec: str, quant: str, as_json: bool) -> None:  # fmt: skip
    """Compile a model: the best record of every task and bucket, defaults elsewhere."""
    try:
        model = resolve_model(model_spec)
        buckets = parse_assignments(bucket_spec)
    except ModelConfigError as err:
        raise click.ClickException(str(err)) from None
    except DimSpecError as err:
        raise click.BadParameter(str(err), param_hint="--buckets") from None
    try:
        tgt = resolve_target(target)
    except TargetError as err:
        raise click.ClickException(str(err)) from None
    store = open_store(db_url)
    try:
        with open_fleet(redis_url) as fleet:
            bests = BestLookup(store, fleet, warn=lambda line: click.echo(line, err=True))
            options = CompileOptions(model, tgt, out_dir, BuildConfig(cache_dir=_cache_dir()),
                                     store, Quant(quant), buckets, bests=bests)  # fmt: skip
            manifest = compile_model(options)
    except (RuntimeModelError, DimSpecError, ModelConfigError) as err:
        raise click.ClickException(str(err)) from None
    finally:
        store.close()
    report = coverage(manifest)
    cache = None
    if redis_url is not None:
        cache = {**asdict(bests.counts), "unavailable": bests.unavailable}
    if as_json:
        click.echo(json.dumps({"model": model.name, "target": tgt.fingerprint, "out": out_dir,
                               **report, "cache": cache}, indent=2))  # fmt: skip
        return
    click.echo(f"{model.name} compiled for {tgt.device} ({tgt.fingerprint}) into {out_dir}")
    for task in manifest.tasks:
        cells = []
        for k in task.kernels:
            where = ",".join(f"{d}={v}" for d, v in k.bucket.items()) or "-"
            what = f"tuned #{k.record_id} {k.median_ms:.4g} ms" if k.tuned else "default"
            cells.append(f"{where} {what}{' (exact)' if k.exact else ''}")
        click.echo(f"  {task.phase:8} {task.name:40} {'; '.join(cells)}")
    click.echo(f"kernels: {report['tuned']} tuned, {report['default']} default")
    if cache is not None:
        click.echo(_cache_line(cache))
    for phase, ms in report["estimated_ms"].items():
        click.echo(f"estimated {phase}: {ms:.4g} ms per pass (measured where tuned, roofline "
                   "elsewhere)")  # fmt: skip


def _cache_line(cache: dict[str, Any]) -> str:
    """Where the best records came from, for the text output of `compile --redis`."""
    line = (f"best records: {cache['hits']} from the Redis cache, {cache['misses']} from the "
            "database (now cached)")  # fmt: skip
    if cache["ignored"]:
        line += f", {cache['ignored']} cache entries ignored (not confirmed by the database)"
    if cache["unavailable"]:
        line += "; Redis went away, the rest from the database"
    return line


def coverage(manifest: Manifest) -> dict[str, Any]:
    """Which task and bucket kernels are tuned and which use defaults, and the estimates."""
    kernels = [
        {
            "phase": t.phase,
            "task": t.name,
            "bucket": dict(k.bucket),
            "record_id": k.record_id,
            "workload_key": k.workload_key,
            "median_ms": k.median_ms,
            "exact": k.exact,
        }
        for t in manifest.tasks
        for k in t.kernels
    ]
    tuned = sum(1 for k in kernels if k["record_id"] is not None)
    return {
        "kernels": kernels,
        "tuned": tuned,
        "default": len(kernels) - tuned,
        "estimated_ms": dict(manifest.estimated_ms),
    }


@click.command(name="run")
@click.argument("model_dir", type=click.Path())
@click.option("--weights", "weights_path", type=click.Path(), help="A safetensors checkpoint.")
@click.option("--random-weights", "use_random", is_flag=True, help="Random weights.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--gen", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Prompt and weights seed.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per kernel "
              "(default: every core; fewer where other processes keep cores busy).")  # fmt: skip
@click.option("--check", is_flag=True, help="Compare the logits with the numpy reference.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run_cmd(model_dir: str, weights_path: str | None, use_random: bool, prompt_len: int,
            gen: int, batch: int, seed: int, threads: int | None, check: bool,
            as_json: bool) -> None:  # fmt: skip
    """Run a compiled model: prefill a random prompt, then greedy decode steps."""
    _run(model_dir, weights_path, use_random, prompt_len, gen, batch, seed, threads, check,
         as_json)  # fmt: skip


def _run(model_dir: str, weights_path: str | None, use_random: bool, prompt_len: int, gen: int,
         batch: int, seed: int, threads: int | None, check: bool,
         as_json: bool) -> None:  # fmt: skip
    if (weights_path is None) == (not use_random):
        raise click.UsageError("pass one of --weights PATH or --random-weights")
    try:
        manifest = read_manifest(model_dir)
        cfg = manifest.model
        weights = (
            random_weights(cfg, seed) if use_random else load_weights(cfg, weights_path or "")
        )
        model = load_model(model_dir, weights, threads=threads)
        max_len = prompt_len + gen
        session = model.session(batch, max_len, prompt_len)
        prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt_len))
        session.synchronize()  # the weights' uploads are not the prefill's time
        t0 = time.perf_counter()
        logits = session.prefill(prompt)
        session.synchronize()
        prefill_s = time.perf_counter() - t0
        seen = [_values(session.host(logits), cfg.dtype)] if check else []
        tokens = [session.greedy(logits[:, -1]).copy()]
        decode_s = 0.0
        for _ in range(gen):
            t0 = time.perf_counter()
            step = session.decode(tokens[-1])
            session.synchronize()
            decode_s += time.perf_counter() - t0
            if check:
                seen.append(_values(session.host(step), cfg.dtype))
            tokens.append(session.greedy(step).copy())
    except RuntimeModelError as err:
        raise click.ClickException(str(err)) from None
    result: dict[str, Any] = {
        "model": cfg.name,
        "batch": batch,
        "prompt_len": prompt_len,
        "gen": gen,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "decode_tokens_per_s": batch * gen / decode_s if gen else None,
        "tokens": np.stack(tokens, axis=1).tolist(),
    }
    if check:
        result |= _check(effective_weights(weights, manifest.quant), prompt, tokens, seen)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{cfg.name}: batch {batch}, prompt {prompt_len}, {gen} decode steps "
                   f"(timed on this machine as it is)")  # fmt: skip
        click.echo(f"prefill: {result['prefill_tokens_per_s']:.1f} tokens/s")
        if gen:
            click.echo(f"decode:  {result['decode_tokens_per_s']:.1f} tokens/s")
        if check:
            same = "match" if result["tokens_match"] else "DIFFER"
            click.echo(f"max_rel_err {result['max_rel_err']:.3g} against the numpy reference; "
                       f"greedy tokens {same}")  # fmt: skip
    if check:
        limit = CHECK_TOLERANCE.get(cfg.dtype, 1e-3)
        if result["max_rel_err"] > limit or not result["tokens_match"]:
            raise click.ClickException(
                f"check failed: max_rel_err {result['max_rel_err']:.3g} (limit {limit:g}), "
                f"tokens {'match' if result['tokens_match'] else 'differ'}"
            )


def _values(logits: np.ndarray, dtype: str) -> np.ndarray:
    """A copy of logits as float64 values (bf16 logits are stored as bit patterns)."""
    return to_float32(logits, dtype).astype(np.float64)


def _check(weights, prompt: np.ndarray, tokens: list[np.ndarray],
           seen: list[np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """Feed the reference the same prompt and tokens; the largest relative logit error (per
    step, against that step's largest reference logit) and whether the greedy picks agree."""
    ref = ReferenceModel(weights)
    expect = [ref.prefill(prompt)]
    for tok in tokens[:-1]:
        expect.append(ref.decode(tok))
    err = max(float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-30))
              for a, r in zip(seen, expect, strict=True))  # fmt: skip
    picks = [expect[0][:, -1].argmax(-1), *(r.argmax(-1) for r in expect[1:])]
    match = all(np.array_equal(p, t) for p, t in zip(picks, tokens, strict=True))
    return {"max_rel_err": err, "tokens_match": bool(match)}
