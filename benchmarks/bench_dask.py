"""DaskRunner: speed-up on a CPU-bound node, overhead on a cheap chain, driver memory when streaming.

    python benchmarks/bench_dask.py [--quick] [--only cpu,overhead,rss] [--json PATH]
                                    [--cpu-items N] [--cpu-batch-size N] [--cpu-ms MS]
                                    [--w1-items N] [--batch-size N] [--rss-items N]

(a) cpu: one node, a pure-Python loop calibrated at start to ~2 ms per call, mapped over 2,000
    items (400 with --quick): ``Runner`` (serial, the reference), ``DaskRunner`` on a
    ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` started once outside the
    timing, Apache Hamilton's ``DaskExecutor`` on the same cluster, pipefunc's
    ``Pipeline.map(executor=...)`` with a 2-process pool and with the cluster's
    ``client.get_executor()``. Target: DaskRunner speed-up >= 1.7 (the limit is 2.0).
(b) overhead: the W1 chain ``x -> a=x+1 -> b=a*2 -> c=b-3`` over 1,000,000 items (100,000),
    batches of 10,000, ``DaskRunner`` against ``Runner``: µs per item and the ratio.
(c) rss: the W1 chain over 1,000,000 items (100,000) from a generator, streamed to parquet
    through ``StreamWriter``, each runner in its own subprocess: the driver's peak RSS
    (``ru_maxrss``). Target: DaskRunner <= 1.5x Runner's.

Within (a) and (b) the variants run round-robin, one timed repeat each per round, after one
warm-up run each, so the ratios compare runs made under the same machine state. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HAMILTON_TELEMETRY_ENABLED", "false")  # inherited by the Dask workers

WORKERS = 2
FULL = {
    "cpu_items": 2_000,
    "w1_items": 1_000_000,
    "rss_items": 1_000_000,
    "cpu_repeats": 5,
    "slow_repeats": 2,
    "w1_repeats": 5,
    "rss_runs": 2,
}
QUICK = {
    "cpu_items": 400,
    "w1_items": 100_000,
    "rss_items": 100_000,
    "cpu_repeats": 3,
    "slow_repeats": 1,
    "w1_repeats": 3,
    "rss_runs": 1,
}
TARGET_SPEEDUP, TARGET_RSS = 1.7, 1.5
SECTIONS = ("cpu", "overhead", "rss")
VERSIONS = (
    "hypernodes-chain",
    "dask",
    "distributed",
    "cloudpickle",
    "apache-hamilton",
    "pipefunc",
    "pyarrow",
)


# --------------------------------------------------------------------------- workloads
def spin(x: int, loops: int) -> int:
    """The CPU-bound work: ``loops`` iterations of integer arithmetic in pure Python."""
    s = x
    for i in range(loops):
        s = (s * 31 + i) & 0xFFFFFFFF
    return s


def y(x: int, loops: int) -> int:
    """(a)'s node: one ~2 ms call per item."""
    return spin(x, loops)


def make_chain():
    """W1 (as in bench_core.py): x -> a=x+1 -> b=a*2 -> c=b-3, fresh function objects."""

    def a(x: int) -> int:
        return x + 1

    def b(a: int) -> int:
        return a * 2

    def c(b: int) -> int:
        return b - 3

    return [a, b, c]


def expected_chain(xs):
    return [(x + 1) * 2 - 3 for x in xs]


def spin_ms(loops: int, calls: int = 15) -> float:
    """Median ms of one ``spin`` call in this process (also run on the workers)."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        spin(i, loops)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def calibrate(target_ms: float) -> int:
    """Loop count for which one ``spin`` call takes ~``target_ms`` on this machine."""
    loops = 2_000
    for _ in range(4):
        loops = max(1, round(loops * target_ms / spin_ms(loops, calls=7)))
    return loops


# --------------------------------------------------------------------------- helpers
def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def start_cluster():
    """The cluster every Dask variant of (a) and (b) shares: 2 worker processes x 1 thread."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(WORKERS)
    return cluster, client, time.perf_counter() - t0


def stats(times):
    return statistics.median(times), min(times)


def round_robin(variants, repeats, skipped, slow=None):
    """``variants``: name -> (setup, check). ``setup()`` builds the variant (untimed) and returns
    ``(run, warm)``: ``run()`` does the timed work and returns its result, ``warm()`` a
    warm-up. One warm-up each, then ``repeats`` rounds of one timed run per variant; a
    variant in ``slow`` (name -> repeats) runs in the first rounds only.
    Returns name -> {"times": [s per run], "note": str}; a variant that fails is dropped."""
    live, out, slow = {}, {}, slow or {}
    for name, (setup, check) in variants.items():
        print(f"  setting up and warming {name} ...", flush=True)
        try:
            run, warm = setup()
            warm()
        except Exception as e:
            if not isinstance(e, ImportError):
                traceback.print_exc()
            skipped.append(f"{name}: {type(e).__name__}: {e}")
            print(f"  {name} skipped: {type(e).__name__}: {e}", flush=True)
            continue
        live[name] = (run, check)
        out[name] = {"times": [], "note": ""}
    for r in range(repeats):
        names = [n for n in live if r < slow.get(n, repeats)]
        print(f"  round {r + 1}/{repeats}: {', '.join(names)}", flush=True)
        for name, (run, check) in list(live.items()):
            if r >= slow.get(name, repeats):
                continue
            gc.collect()
            try:
                t0 = time.perf_counter()
                result = run()
                out[name]["times"].append(time.perf_counter() - t0)
            except Exception as e:
                traceback.print_exc()
                skipped.append(f"{name}: {type(e).__name__}: {e}")
                del live[name], out[name]
                continue
            note = check(result)
            if note and note not in out[name]["note"]:
                out[name]["note"] += note
            del result
    return out


# --------------------------------------------------------------------------- (a) CPU-bound
# Hamilton maps a function over many items with its dynamic execution: a `Parallelizable[T]`
# node yields the items, the nodes after it run once per item as tasks, and `Collect[T]`
# gathers them; `hamilton.plugins.h_dask.DaskExecutor` is the remote executor that submits
# those tasks to a Dask client (Hamilton's "parallel execution" docs). The other Dask
# integration, `h_dask.DaskGraphAdapter`, turns the nodes of one `execute` into
# `dask.delayed` calls (for Dask data frames), with no way to map over items.
# Hamilton needs a module of functions that the workers can import: it is written to a
# file (`ad_hoc_utils.create_module`) and shipped with `client.upload_file`, the Dask way.
HAMILTON_SOURCE = '''
from hamilton.htypes import Collect, Parallelizable


def item(xs: list) -> Parallelizable[int]:
    """One task per item."""
    yield from xs


def y(item: int, loops: int) -> int:
    return _spin(item, loops)


def ys(y: Collect[int]) -> list:
    return list(y)
'''


def cpu_variants(args, client, loops, xs, reference, notes):
    """name -> (setup, check) for (a). ``reference`` receives Runner's result first."""
    n, bs = len(xs), args.cpu_batch_size
    warm_n = min(n, max(n // 5, 2 * bs * WORKERS))
    inputs = {"x": xs, "loops": loops}
    warm_inputs = {"x": xs[:warm_n], "loops": loops}

    def check(result):
        if not reference:
            reference.append(result)
            return ""
        if result == reference[0]:
            return ""
        if sorted(result) == sorted(reference[0]):
            return "results out of order; "
        return "WRONG RESULT; "

    def ours(runner_factory):
        def setup():
            from hypernodes_chain import Graph, node

            graph, runner = Graph(nodes=[node(y)]), runner_factory()

            def run(inp=inputs):
                rows = runner.map(graph, inputs=inp, map_over="x", batch_size=bs)
                return [r["y"] for r in rows]

            return run, lambda: run(warm_inputs)

        return setup

    def runner():
        from hypernodes_chain import Runner

        return Runner()

    def dask_runner():
        from hypernodes_chain import DaskRunner

        return DaskRunner(client)

    def hamilton():
        from hamilton import ad_hoc_utils, driver
        from hamilton.plugins import h_dask

        spin_src = inspect.getsource(spin).replace("def spin(", "def _spin(")
        module = ad_hoc_utils.create_module(HAMILTON_SOURCE + "\n\n" + spin_src)
        client.upload_file(module.__file__)
        dr = (
            driver.Builder()
            .enable_dynamic_execution(allow_experimental_mode=True)
            .with_remote_executor(h_dask.DaskExecutor(client=client))
            .with_modules(module)
            .build()
        )

        def run(inp=None):
            inp = inp or {"xs": xs, "loops": loops}
            return dr.execute(["ys"], inputs=inp)["ys"]

        return run, lambda: run({"xs": xs[:warm_n], "loops": loops})

    def pipefunc_with(make_executor):
        def setup():
            from pipefunc import Pipeline, pipefunc

            pipe = Pipeline([pipefunc(output_name="y", mapspec="x[i] -> y[i]")(y)])
            executor = make_executor()
            notes.setdefault("executors", []).append(executor)

            def run(inp=inputs):
                res = pipe.map(
                    inp,
                    executor=executor,
                    chunksizes=bs,
                    storage="dict",
                    show_progress=False,
                )
                return res["y"].output.tolist()

            return run, lambda: run(warm_inputs)

        return setup

    def process_pool():
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: this process runs the Dask client's threads, and forking a
        # threaded process can deadlock. The pool is started by the warm-up, outside timing.
        return ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))

    return {
        "Runner": (ours(runner), check),
        "DaskRunner": (ours(dask_runner), check),
        "Hamilton DaskExecutor": (hamilton, check),
        "pipefunc ProcessPool(2)": (pipefunc_with(process_pool), check),
        "pipefunc client.get_executor()": (pipefunc_with(client.get_executor), check),
    }


HOW = {
    "Runner": "Runner().map(batch_size=B), serial",
    "DaskRunner": "DaskRunner(client).map(batch_size=B)",
    "Hamilton DaskExecutor": "Parallelizable/Collect, with_remote_executor(DaskExecutor(client))",
    "pipefunc ProcessPool(2)": "Pipeline.map(executor=ProcessPoolExecutor(2), chunksizes=B)",
    "pipefunc client.get_executor()": "Pipeline.map(executor=client.get_executor(), chunksizes=B)",
}


def section_cpu(args, client, skipped):
    loops = calibrate(args.cpu_ms)
    here = spin_ms(loops, calls=25)
    on_workers = client.run(spin_ms, loops, 25)
    print(
        f"  spin: {loops:,} loops; one call {here:.2f} ms here, "
        + ", ".join(f"{v:.2f}" for v in on_workers.values())
        + " ms on the workers",
        flush=True,
    )
    xs, reference, notes = list(range(args.cpu_items)), [], {}
    try:
        variants = cpu_variants(args, client, loops, xs, reference, notes)
        slow = {"Hamilton DaskExecutor": min(args.cpu_repeats, args.slow_repeats)}
        res = round_robin(variants, args.cpu_repeats, skipped, slow)
    finally:
        for executor in notes.get("executors", []):
            executor.shutdown(wait=True)
    return {
        "loops": loops,
        "spin_ms_driver": here,
        "spin_ms_workers": list(on_workers.values()),
        "n": len(xs),
        "batch_size": args.cpu_batch_size,
        "variants": res,
    }


def report_cpu(cpu):
    res, n = cpu["variants"], cpu["n"]
    ref = stats(res["Runner"]["times"])[0] if "Runner" in res else math.nan
    print(
        f"\n### (a) CPU-bound node: ~{cpu['spin_ms_driver']:.2f} ms/item ({cpu['loops']:,} loops), "
        f"{n:,} items, B = {cpu['batch_size']}, {WORKERS} workers x 1 thread\n"
    )
    print("| variant | how | reps | median s | min s | items/s | speed-up vs Runner | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, r in res.items():
        med, low = stats(r["times"])
        print(
            f"| {name} | {HOW[name]} | {len(r['times'])} | {med:.3f} | {low:.3f} | "
            f"{n / med:,.0f} | {ref / med:.2f}x | {r['note'].strip('; ')} |"
        )
    print(
        f"\nlimit: {WORKERS:.1f}x ({WORKERS} worker processes); serial ideal "
        f"{n * cpu['spin_ms_driver'] / 1e3:.2f} s; Dask variants share one cluster."
    )


# --------------------------------------------------------------------------- (b) overhead
def section_overhead(args, client, skipped):
    from hypernodes_chain import DaskRunner, Graph, Runner, node

    xs, bs = list(range(args.w1_items)), args.batch_size
    want = expected_chain(xs)
    warm = xs[: min(len(xs), 4 * bs * WORKERS)]

    def variant(runner):
        def setup():
            graph = Graph(nodes=[node(f) for f in make_chain()])

            def run(inp=xs):
                return runner.map(graph, inputs={"x": inp}, map_over="x", batch_size=bs)

            return run, lambda: run(warm)

        return setup

    def check(rows):
        return "" if [r["c"] for r in rows] == want else "WRONG RESULT; "

    variants = {
        "Runner": (variant(Runner()), check),
        "DaskRunner": (variant(DaskRunner(client)), check),
    }
    res = round_robin(variants, args.w1_repeats, skipped)
    return {"n": len(xs), "batch_size": bs, "variants": res}


def report_overhead(ov):
    res, n = ov["variants"], ov["n"]
    ref = stats(res["Runner"]["times"])[0] if "Runner" in res else math.nan
    print(f"\n### (b) overhead: W1 chain (3 cheap nodes), {n:,} items, B = {ov['batch_size']:,}\n")
    print("| variant | reps | median µs/item | min µs/item | x Runner | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in res.items():
        med, low = stats(r["times"])
        print(
            f"| {name} | {len(r['times'])} | {med * 1e6 / n:.3f} | {low * 1e6 / n:.3f} | "
            f"{med / ref:.2f}x | {r['note'].strip('; ')} |"
        )


# --------------------------------------------------------------------------- (c) RSS
def rss_child(variant: str, rows: int, batch_size: int) -> None:
    """One driver process: set up, stream ``rows`` items to parquet, print one JSON line."""
    import pyarrow.parquet as pq

    from hypernodes_chain import DaskRunner, Graph, Runner, node
    from hypernodes_chain.io import StreamWriter

    cluster = client = None
    if variant == "DaskRunner":
        cluster, client, _ = start_cluster()
        runner = DaskRunner(client)
    else:
        runner = Runner()
    graph = Graph(nodes=[node(f) for f in make_chain()], name="w1")
    setup_mb = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench_dask_") as tmp:
        out = Path(tmp) / "out"
        writer = StreamWriter(out, format="parquet", max_lines_per_file=100_000)
        t0 = time.perf_counter()
        result = runner.map(
            graph,
            inputs={"x": (x for x in range(rows))},
            map_over="x",
            batch_size=batch_size,
            writer=writer,
        )
        run_s = time.perf_counter() - t0
        rss_mb = peak_rss_mb()
        workers_mb = []
        if client is not None:
            kib = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            workers_mb = [v / 1024 for v in kib.values()]
        files = sorted(out.glob("*.parquet"))
        n = sum(pq.read_metadata(f).num_rows for f in files)
        total = sum(sum(pq.read_table(f, columns=["c"]).column(0).to_pylist()) for f in files)
        ok = result.n_ok == rows and n == rows and total == rows * (rows - 1) - rows
    if client is not None:
        client.close()
        cluster.close()
    print(
        json.dumps(
            {
                "run_s": run_s,
                "rss_mb": rss_mb,
                "setup_rss_mb": setup_mb,
                "workers_rss_mb": workers_mb,
                "files": len(files),
                "ok": ok,
            }
        )
    )


def rss_measure(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--rss-items", str(args.rss_items)]
    cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True)
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode or not lines:
        err = proc.stderr.decode().strip().splitlines() or ["?"]
        return {"failed": err[-1], "stderr": proc.stderr.decode()[-2000:]}
    return json.loads(lines[-1])


def section_rss(args, skipped):
    parent_mb = peak_rss_mb()  # a floor of every child's ru_maxrss (see main)
    res: dict[str, list[dict]] = {"Runner": [], "DaskRunner": []}
    for r in range(args.rss_runs):  # alternating, one subprocess per run
        for name in res:
            print(f"  {name} subprocess ({r + 1}/{args.rss_runs}) ...", flush=True)
            m = rss_measure(name, args)
            if "failed" in m:
                print(m["stderr"], file=sys.stderr)
                skipped.append(f"(c) {name}: {m['failed']}")
            res[name].append(m)
    return {
        "n": args.rss_items,
        "batch_size": args.batch_size,
        "parent_rss_mb": parent_mb,
        "variants": res,
    }


def rss_summary(runs):
    ok = [m for m in runs if "failed" not in m]
    return (max(m["rss_mb"] for m in ok), ok) if ok else (math.nan, ok)


def report_rss(rs):
    res, n = rs["variants"], rs["n"]
    ref = rss_summary(res["Runner"])[0]
    print(
        f"\n### (c) driver peak RSS: W1 chain, {n:,} items from a generator -> StreamWriter "
        f"(parquet, 100,000 rows/shard), B = {rs['batch_size']:,}\n"
    )
    print(
        "| variant | runs | driver peak RSS MB | x Runner | RSS before map MB | run s | "
        "workers' peak RSS MB (not counted) | ok |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for name, runs in res.items():
        rss, ok = rss_summary(runs)
        if not ok:
            print(f"| {name} | 0 | - | - | - | - | - | failed: {runs[0]['failed']} |")
            continue
        setup = max(m["setup_rss_mb"] for m in ok)
        run_s = statistics.median(m["run_s"] for m in ok)
        workers = ", ".join(f"{v:.0f}" for v in ok[-1]["workers_rss_mb"]) or "-"
        print(
            f"| {name} | {len(ok)} | {rss:.0f} | {rss / ref:.2f}x | {setup:.0f} | {run_s:.2f} | "
            f"{workers} | {all(m['ok'] for m in ok)} |"
        )
    print(
        "\npeak RSS = ru_maxrss of the driver process (max over runs). The Dask worker processes "
        "are other processes and are not counted; the LocalCluster's scheduler runs in the "
        "driver process and is. 'RSS before map': after imports and cluster start. "
        f"The launching process's peak, a floor of these numbers, was {rs['parent_rss_mb']:.0f} MB."
    )


# --------------------------------------------------------------------------- main
def targets(results) -> list[tuple[str, str, bool | None]]:
    out = []
    cpu = results.get("cpu")
    if cpu is not None:
        res = cpu["variants"]
        if "Runner" in res and "DaskRunner" in res:
            s = stats(res["Runner"]["times"])[0] / stats(res["DaskRunner"]["times"])[0]
            out.append(
                (
                    f"(a) DaskRunner speed-up vs Runner >= {TARGET_SPEEDUP} "
                    f"(limit {WORKERS:.1f} on {WORKERS} workers)",
                    f"{s:.2f}x",
                    s >= TARGET_SPEEDUP,
                )
            )
        else:
            out.append((f"(a) DaskRunner speed-up >= {TARGET_SPEEDUP}", "not measured", None))
    rs = results.get("rss")
    if rs is not None:
        ours, ref = (rss_summary(rs["variants"][k])[0] for k in ("DaskRunner", "Runner"))
        ratio = ours / ref
        out.append(
            (
                f"(c) DaskRunner driver peak RSS <= {TARGET_RSS}x Runner's",
                f"{ratio:.2f}x ({ours:.0f} MB vs {ref:.0f} MB)",
                None if math.isnan(ratio) else ratio <= TARGET_RSS,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers here")
    parser.add_argument("--cpu-items", type=int, help="(a) items (2,000; --quick 400)")
    parser.add_argument(
        "--cpu-batch-size", type=int, help="(a) batch size B (items / 40, so 20 per worker)"
    )
    parser.add_argument("--cpu-ms", type=float, default=2.0, help="(a) ms per call (2)")
    parser.add_argument("--w1-items", type=int, help="(b) items (1,000,000; --quick 100,000)")
    parser.add_argument("--rss-items", type=int, help="(c) items (1,000,000; --quick 100,000)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="(b), (c) batch size")
    parser.add_argument("--repeats", type=int, help="timed rounds of (a) and (b)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    args.cpu_items = args.cpu_items or cfg["cpu_items"]
    args.w1_items = args.w1_items or cfg["w1_items"]
    args.rss_items = args.rss_items or cfg["rss_items"]
    args.cpu_batch_size = args.cpu_batch_size or max(1, args.cpu_items // (20 * WORKERS))
    args.cpu_repeats = args.repeats or cfg["cpu_repeats"]
    args.slow_repeats = args.repeats or cfg["slow_repeats"]
    args.w1_repeats = args.repeats or cfg["w1_repeats"]
    args.rss_runs = cfg["rss_runs"]
    if args.child:
        rss_child(args.child, args.rss_items, args.batch_size)
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    if set(only) - set(SECTIONS):
        parser.error(f"--only takes a subset of {SECTIONS}")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    print(
        f"nproc: {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), load average {load}"
    )
    print("versions: " + ", ".join(f"{d} {version(d) or 'not installed'}" for d in VERSIONS))
    sizes = {k: getattr(args, k) for k in ("cpu_items", "cpu_batch_size", "w1_items")}
    sizes |= {k: getattr(args, k) for k in ("rss_items", "batch_size", "cpu_repeats")}
    print(f"sizes: {sizes}", flush=True)

    skipped: list[str] = []
    results: dict = {"env": {"python": platform.python_version(), "load": os.getloadavg()}}
    results["env"]["versions"] = {d: version(d) for d in VERSIONS}
    results["env"]["nproc"] = len(os.sched_getaffinity(0))
    if "rss" in only:
        # First, while this process is small: a child's ru_maxrss starts at the RSS high-water
        # mark of the process that launched it (Linux carries it across fork/vfork + exec).
        print("(c) driver peak RSS, streaming to parquet ...", flush=True)
        results["rss"] = section_rss(args, skipped)
    cluster = client = None
    if "cpu" in only or "overhead" in only:
        importlib.import_module("hypernodes_chain")
        cluster, client, start_s = start_cluster()
        results["cluster_start_s"] = start_s
        print(
            f"LocalCluster(n_workers={WORKERS}, threads_per_worker=1, processes=True) + Client: "
            f"started in {start_s:.2f} s (not in any timing below)",
            flush=True,
        )
    try:
        if "cpu" in only:
            print("(a) CPU-bound node ...", flush=True)
            results["cpu"] = section_cpu(args, client, skipped)
        if "overhead" in only:
            print("(b) overhead, W1 chain ...", flush=True)
            results["overhead"] = section_overhead(args, client, skipped)
    finally:
        if client is not None:
            client.close()
            cluster.close()

    if "cluster_start_s" in results:
        print(
            f"\ncluster start (LocalCluster + Client, 2 workers): {results['cluster_start_s']:.2f} s"
        )
    if "cpu" in results:
        report_cpu(results["cpu"])
    if "overhead" in results:
        report_overhead(results["overhead"])
    if "rss" in results:
        report_rss(results["rss"])
    results["targets"] = []
    print("\n### targets\n")
    for what, got, passed in targets(results):
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        print(f"- {what}: {got} -> {verdict}")
        results["targets"].append({"target": what, "measured": got, "pass": passed})
    for s in skipped:
        print(f"skipped: {s}")
    results["skipped"] = skipped
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
