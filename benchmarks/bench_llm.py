"""LLM nodes: throughput of an ``@llm_node`` map against the raw engine, and two engines
sharing one place (``max_live=1``).

    python benchmarks/bench_llm.py [--quick] [--model PATH [--model PATH]] [--device cuda]
                                   [--threads N] [--batch-size B] [--chain-items N]

(a) The same N prompts (2,048 x 32 new tokens, greedy; ``--quick``: 256 x 16) through
    (1) the raw engine, a hand-written loop of ``engine.generate(batch, max_tokens=T,
    temperature=0)`` over batches of ``--batch-size`` (the limit), and (2) an ``@llm_node``
    ``Runner(engines={"m": engine}).map(..., batch_size=B, writer=StreamWriter(parquet))``
    without a cache, so every item reaches the engine. One engine object, started before any
    timing, serves both. Target: throughput of (2) >= 0.95 x (1).
(b) A chain of two ``@llm_node``s on two engines (two tiny models with different seeds, or
    the ``--model`` folders) through ``EngineBroker(..., max_live=1)`` and ``max_live=2``, each
    variant in its own subprocess: engine starts per engine, wall time, peak RSS. DESIGN's
    target: starts per engine = ceil(n / engine_window), engine_window = 100,000.

Without ``--model`` the engines load a tiny random Llama built by ``build_tiny_model`` (the
numbers then measure the framework and HF ``generate`` overhead, not a real model). Variants
run round-robin, one repeat each per round after a warm-up, so the ratios compare the same
machine state. Self-contained: needs only hypernodes_chain (extra ``local``). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

FULL = {"n": 2048, "tokens": 32, "reps": 3, "chain_items": 20_000, "chain_reps": 3}
QUICK = {"n": 256, "tokens": 16, "reps": 2, "chain_items": 1_000, "chain_reps": 1}
THROUGHPUT_TARGET = 0.95
ENGINE_WINDOW = 100_000  # DESIGN "LLM nodes": engine-aware maps, default engine_window
CHAIN_TOKENS = 4  # max_tokens of each LLM step of (b)
CHAIN_BATCH = 256  # map batch_size of (b): several batches even with --quick


# --------------------------------------------------------------------------- set-up
def set_threads(threads: int) -> None:
    """OMP_NUM_THREADS and torch's intra-op threads (before torch is imported)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(threads)


def prompts_of(n: int, seed: int = 0) -> list[str]:
    """n deterministic prompts of 4-12 words of the tiny model's vocabulary."""
    import random

    from hypernodes_chain.engines.tiny import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(n)]


def make_engine(path: str, args: argparse.Namespace, batch: int) -> Any:
    from hypernodes_chain.engines import TransformersEngine

    return TransformersEngine(path, device=args.device, dtype=args.dtype, max_batch_size=batch)


def replies_in(folder: Path, column: str) -> list[Any]:
    """The ``column`` of a StreamWriter folder, in input order."""
    from hypernodes_chain.io import read_parquet

    rows = sorted(read_parquet(folder), key=lambda r: r["_index"])
    return [r[column] for r in rows]


def timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- (a) throughput
def throughput(args: argparse.Namespace, cfg: dict, model: str, work: Path) -> list[dict]:
    from hypernodes_chain import Graph, Runner
    from hypernodes_chain.engines import EngineBroker
    from hypernodes_chain.io import StreamWriter
    from hypernodes_chain.llm import llm_node

    n, tokens, batch = cfg["n"], cfg["tokens"], args.batch_size
    prompts = prompts_of(n)
    engine = make_engine(model, args, batch)
    engine.start()  # outside every timed region; both variants share this started engine

    @llm_node(engine="m", output_name="reply", max_tokens=tokens, temperature=0, cache=False)
    def ask(text: str) -> str:
        return text

    graph = Graph(nodes=[ask])
    # what Runner(engines={"m": engine}) builds, kept at hand for its status(); kept alive
    # for the whole part, as a broker stops its live engines when it is freed
    broker = EngineBroker({"m": engine})
    runner = Runner(engines=broker)
    got: dict[str, list[Any]] = {}
    runs = iter(range(10_000))

    def raw(items: list[str]) -> float:
        out: list[Any] = []

        def loop() -> None:
            for i in range(0, len(items), batch):
                out.extend(engine.generate(items[i : i + batch], max_tokens=tokens, temperature=0))

        seconds = timed(loop)
        got["raw"] = out
        return seconds

    def mapped(items: list[str]) -> float:
        folder = work / f"out{next(runs)}"
        writer = StreamWriter(folder, format="parquet")
        seconds = timed(
            lambda: runner.map(
                graph, {"text": items}, map_over="text", batch_size=batch, writer=writer
            )
        )
        got["map"] = replies_in(folder, "reply")
        return seconds

    rows = [
        {
            "key": "raw",
            "library": "engine (limit)",
            "how": f"loop of `engine.generate(prompts[i:i+{batch}], max_tokens={tokens}, "
            "temperature=0)`",
            "once": raw,
        },
        {
            "key": "map",
            "library": "hypernodes_chain",
            "how": f"`Runner(engines=EngineBroker({{'m': engine}})).map(graph, "
            "{'text': prompts}, "
            f"map_over='text', batch_size={batch}, writer=StreamWriter(parquet))`, "
            "one `@llm_node`, no cache",
            "once": mapped,
        },
    ]
    warm = prompts[: 4 * batch]
    for r in rows:
        r["once"](warm)
        r["times"], r["note"] = [], ""
    for _ in range(cfg["reps"]):
        for r in rows:
            r["times"].append(r["once"](prompts))
            if r["key"] == "map" and got["map"] != got["raw"]:
                r["note"] = "REPLIES DIFFER from the raw loop"
    starts = broker.status()["m"]["starts"]
    if starts != 1:
        rows[1]["note"] += f" engine started {starts} times (expected 1)"
    for r in rows:
        r["n"], r["tokens"] = n, tokens
    return rows


# --------------------------------------------------------------------------- (b) two engines
def chain_child(spec: dict) -> dict:
    """One variant of (b), in its own process: map the chain, report starts, wall, peak RSS."""
    set_threads(spec["threads"])
    from hypernodes_chain import Graph, Runner
    from hypernodes_chain.engines import EngineBroker
    from hypernodes_chain.io import StreamWriter
    from hypernodes_chain.llm import llm_node

    args = argparse.Namespace(device=spec["device"], dtype=spec["dtype"])
    engines = {
        "a": make_engine(spec["models"][0], args, spec["engine_batch"]),
        "b": make_engine(spec["models"][1], args, spec["engine_batch"]),
    }
    for engine in engines.values():  # imports and file cache warm; not a broker start
        engine.start()
        engine.stop()
    tokens = spec["tokens"]

    @llm_node(engine="a", output_name="first", max_tokens=tokens, temperature=0, cache=False)
    def first(text: str) -> str:
        return text

    @llm_node(engine="b", output_name="second", max_tokens=tokens, temperature=0, cache=False)
    def second(first: str) -> str:
        return f"review {first}"

    broker = EngineBroker(engines, max_live=spec["max_live"])
    runner = Runner(engines=broker)
    prompts = prompts_of(spec["n"])
    folder = Path(spec["out"])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = timed(
        lambda: runner.map(
            Graph(nodes=[first, second]),
            {"text": prompts},
            map_over="text",
            batch_size=spec["batch"],
            writer=StreamWriter(folder, format="parquet"),
        )
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before reading back
    status = broker.status()
    broker.close()
    import hashlib

    digest = hashlib.sha256(json.dumps(replies_in(folder, "second")).encode()).hexdigest()
    return {
        "seconds": seconds,
        "starts": {k: v["starts"] for k, v in status.items()},
        "peak_mb": peak / 1024,
        "rss0_mb": rss0 / 1024,
        "digest": digest,
    }


def chain(args: argparse.Namespace, cfg: dict, models: list[str], work: Path) -> list[dict]:
    n = cfg["chain_items"]
    rows = [
        {
            "max_live": live,
            "library": "hypernodes_chain" + (" (limit)" if live == 2 else ""),
            "how": f"`EngineBroker({{'a': ..., 'b': ...}}, max_live={live})`",
            "runs": [],
        }
        for live in (1, 2)
    ]
    for rep in range(cfg["chain_reps"]):
        for r in rows:
            spec = {
                "threads": args.threads,
                "device": args.device,
                "dtype": args.dtype,
                "models": models,
                "engine_batch": args.batch_size,
                "tokens": CHAIN_TOKENS,
                "batch": CHAIN_BATCH,
                "n": n,
                "max_live": r["max_live"],
                "out": str(work / f"chain{r['max_live']}_{rep}"),
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"the max_live={r['max_live']} child failed")
            r["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["n"] = n
        r["times"] = [run["seconds"] for run in r["runs"]]
        r["note"] = ""
    if len({run["digest"] for r in rows for run in r["runs"]}) != 1:
        rows[0]["note"] = "REPLIES DIFFER between variants"
    return rows


# --------------------------------------------------------------------------- report
def report_throughput(rows: list[dict]) -> None:
    base = statistics.median(rows[0]["times"])
    print("\n### A: throughput, one `@llm_node` map vs the raw engine\n")
    print(
        "| workload | library | how | n | reps | median (s) | min (s) | prompts/s | "
        "new tokens/s | x limit (throughput) | target | verdict | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        ratio = base / med
        is_ours = r["key"] == "map"
        target = f">= {THROUGHPUT_TARGET} x limit" if is_ours else ""
        verdict = ("PASS" if ratio >= THROUGHPUT_TARGET else "FAIL") if is_ours else ""
        print(
            f"| A, {r['n']:,} x {r['tokens']} tokens | {r['library']} | {r['how']} | {r['n']:,} | "
            f"{len(r['times'])} | {med:.3f} | {low:.3f} | {r['n'] / med:,.1f} | "
            f"{r['n'] * r['tokens'] / med:,.0f} | {ratio:.3f} | {target} | {verdict} | "
            f"{r['note']} |"
        )


def report_chain(rows: list[dict]) -> None:
    n = rows[0]["n"]
    want = math.ceil(n / ENGINE_WINDOW)
    base = statistics.median(rows[1]["times"])
    print("\n### B: two `@llm_node`s on two engines, max_live=1 vs 2 (one subprocess each)\n")
    print(
        "| workload | library | how | n | reps | median (s) | min (s) | x limit | "
        "starts a / b | peak RSS (MB) | target | verdict | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        last = r["runs"][-1]
        per_run = [f"{run['starts']['a']} / {run['starts']['b']}" for run in r["runs"]]
        starts = per_run[0] if len(set(per_run)) == 1 else ", ".join(per_run)
        peak = statistics.median(run["peak_mb"] for run in r["runs"])
        ok = all(s == want for run in r["runs"] for s in run["starts"].values())
        note = f"RSS before the map {last['rss0_mb']:.0f} MB. {r['note']}".strip()
        print(
            f"| B, chain a -> b | {r['library']} | {r['how']} | {n:,} | {len(r['times'])} | "
            f"{med:.2f} | {low:.2f} | {med / base:.2f}x | {starts} | "
            f"{peak:.0f} | starts per engine = ceil({n:,} / {ENGINE_WINDOW:,}) = {want} | "
            f"{'PASS' if ok else 'FAIL'} | {note} |"
        )


# --------------------------------------------------------------------------- main
def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts, items and repeats")
    parser.add_argument(
        "--model",
        action="append",
        metavar="PATH",
        help="a local HF causal LM folder (default: a tiny random model); give it twice for "
        "two different engines in (b), once for both",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the engines (cpu, cuda)")
    parser.add_argument("--dtype", default=None, help="engine dtype (float32, bfloat16, ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate (64)")
    parser.add_argument("--n", type=int, help="prompts of (a)")
    parser.add_argument("--tokens", type=int, help="new tokens per prompt of (a)")
    parser.add_argument("--reps", type=int, help="repeats of (a)")
    parser.add_argument("--chain-items", type=int, help="items of (b)")
    parser.add_argument("--chain-reps", type=int, help="repeats of (b)")
    parser.add_argument("--skip-chain", action="store_true", help="run (a) only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        print(json.dumps(chain_child(json.loads(args.child))))
        return
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("n", "tokens", "reps", "chain_items", "chain_reps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    set_threads(args.threads)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"--device {args.device}: CUDA is not available to torch {torch.__version__} "
            "(a CPU-only build, or no GPU visible); nothing was run",
            file=sys.stderr,
        )
        raise SystemExit(2)
    versions = []
    for dist in ("hypernodes-chain", "torch", "transformers"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc: {len(os.sched_getaffinity(0))}, load average {load}")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch threads "
    print(
        f"{'; '.join(versions)}; {threads}{torch.get_num_threads()}, device {args.device}, "
        f"dtype {args.dtype}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_llm_") as tmp:
        work = Path(tmp)
        if args.model:
            models = [str(Path(m).expanduser()) for m in args.model]
            print(f"models: {', '.join(models)}")
        else:
            from hypernodes_chain.engines import build_tiny_model

            t0 = time.perf_counter()
            models = [str(build_tiny_model(work / "tiny0", seed=0))]
            if not args.skip_chain:
                models.append(str(build_tiny_model(work / "tiny1", seed=1)))
            print(
                f"models: tiny random Llama(s) from hypernodes_chain.engines.build_tiny_model "
                f"(seeds 0 and 1; 2 layers, width 32, vocab 512), built in "
                f"{time.perf_counter() - t0:.1f} s: the numbers measure framework and HF "
                "generate overhead, not a real model"
            )
        print(
            f"(a) {cfg['n']:,} prompts x {cfg['tokens']} new tokens, greedy, batch "
            f"{args.batch_size} (engine max_batch_size={args.batch_size}), {cfg['reps']} reps, "
            f"warm-up {4 * args.batch_size} prompts per variant",
            flush=True,
        )
        t0 = time.perf_counter()
        rows_a = throughput(args, cfg, models[0], work)
        wall_a = time.perf_counter() - t0
        rows_b: list[dict] = []
        if not args.skip_chain:
            pair = [models[0], models[-1]] if len(models) < 3 else models[:2]
            print(
                f"(b) {cfg['chain_items']:,} items through 2 LLM steps (engine a: {pair[0]}, "
                f"b: {pair[1]}), max_tokens={CHAIN_TOKENS} each, greedy, map batch_size="
                f"{CHAIN_BATCH} ({math.ceil(cfg['chain_items'] / CHAIN_BATCH)} batches), engine "
                f"max_batch_size={args.batch_size}, no cache, StreamWriter(parquet), "
                f"{cfg['chain_reps']} rep(s) per variant",
                flush=True,
            )
            t0 = time.perf_counter()
            rows_b = chain(args, cfg, pair, work)
            wall_b = time.perf_counter() - t0
    report_throughput(rows_a)
    print(f"\n(a) took {wall_a:.1f} s in all.")
    if rows_b:
        report_chain(rows_b)
        print(
            f"\n(b) took {wall_b:.1f} s in all. Wall: the map alone; before it, each engine "
            "was started and stopped once outside the broker (library imports, file cache), "
            "so every start the broker counts is inside the timed map. Peak RSS: ru_maxrss of the "
            "variant's process, taken before its output is read back."
        )
        batches = math.ceil(rows_b[0]["n"] / CHAIN_BATCH)
        window = math.ceil(rows_b[0]["n"] / ENGINE_WINDOW)
        for run in rows_b[0]["runs"]:
            got = max(run["starts"].values())
            if got >= batches:
                how = "the engines were swapped in every batch (no split at engine changes)"
            elif got == window:
                how = "the runner split the plan at the engine change (one start per window)"
            else:
                how = "neither once per batch nor once per window"
            print(f"max_live=1: {run['starts']} starts for {batches} batches: {how}.")


if __name__ == "__main__":
    main()
