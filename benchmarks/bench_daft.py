"""DaftRunner: speed-up on a CPU-bound node; a cheap chain over many rows into parquet.

    python benchmarks/bench_daft.py [--quick] [--only cpu,w1] [--json PATH]
                                    [--cpu-items N] [--cpu-batch-size N] [--cpu-ms MS]
                                    [--w1-items N] [--batch-size N]

(a) cpu: one node, a pure-Python loop calibrated at start to ~2 ms per call, mapped over 2,000
    items (400 with --quick): ``Runner`` (serial, the reference), ``DaftRunner()`` (the
    default: Daft's threads of the driver's process, so the GIL serialises pure Python), and
    ``DaftRunner(concurrency=2)`` (a class UDF in 2 UDF processes, which Daft starts for every
    query: the time includes their start). Also shown: the time of a 2-item map with
    ``concurrency=2``, i.e. what starting the UDF processes costs per map.
(b) w1: the W1 chain ``x -> a=x+1 -> b=a*2 -> c=b-3`` over 1,000,000 rows (100,000), all
    outputs kept and written to parquet, each variant in its own subprocess (time and peak
    RSS, ``ru_maxrss``): ``Runner.map`` + ``StreamWriter`` (a generator in), ``DaftRunner.map``
    + ``StreamWriter``, ``DaftRunner.map_dataframe`` on ``daft.range`` + Daft's
    ``write_parquet``, and the limit for Daft: the same arithmetic as Daft expressions
    (``col("x") + 1``, ...) + ``write_parquet``.

Within (a) the variants run round-robin, one timed repeat each per round, after one warm-up
run each; medians. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
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

os.environ.setdefault("DAFT_ANALYTICS_ENABLED", "0")  # no telemetry requests from a benchmark

CORES = 2
FULL = {"cpu_items": 2_000, "w1_items": 1_000_000, "cpu_repeats": 5, "w1_runs": 2}
QUICK = {"cpu_items": 400, "w1_items": 100_000, "cpu_repeats": 3, "w1_runs": 1}
SECTIONS = ("cpu", "w1")
VERSIONS = ("hypernodes-chain", "daft", "pyarrow", "cloudpickle")


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
    """W1: x -> a=x+1 -> b=a*2 -> c=b-3 (annotated: the columns are Int64)."""

    def a(x: int) -> int:
        return x + 1

    def b(a: int) -> int:
        return a * 2

    def c(b: int) -> int:
        return b - 3

    return [a, b, c]


def spin_ms(loops: int, calls: int = 15) -> float:
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        spin(i, loops)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def calibrate(target_ms: float) -> int:
    loops = 2_000
    for _ in range(4):
        loops = max(1, round(loops * target_ms / spin_ms(loops, calls=7)))
    return loops


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- (a) CPU-bound
def section_cpu(args, skipped):
    from hypernodes_chain import DaftRunner, Graph, Runner, node

    loops = calibrate(args.cpu_ms)
    ms = spin_ms(loops, calls=25)
    print(f"  spin: {loops:,} loops, one call {ms:.2f} ms", flush=True)
    xs, bs = list(range(args.cpu_items)), args.cpu_batch_size
    want = [spin(x, loops) for x in xs[:50]]
    graph = Graph(nodes=[node(y)])
    variants = {
        "Runner": Runner(),
        "DaftRunner() (threads, default)": DaftRunner(),
        "DaftRunner(concurrency=2) (UDF processes)": DaftRunner(concurrency=CORES),
    }

    def run(runner, items):
        rows = runner.map(graph, {"x": items, "loops": loops}, map_over="x", batch_size=bs)
        return [r["y"] for r in rows]

    times: dict[str, list[float]] = {name: [] for name in variants}
    notes: dict[str, str] = dict.fromkeys(variants, "")
    for name, runner in variants.items():  # warm-up: imports, first query
        print(f"  warming {name} ...", flush=True)
        run(runner, xs[: 4 * bs])
    for r in range(args.cpu_repeats):
        print(f"  round {r + 1}/{args.cpu_repeats}", flush=True)
        for name, runner in variants.items():
            gc.collect()
            t0 = time.perf_counter()
            try:
                got = run(runner, xs)
            except Exception as e:
                traceback.print_exc()
                skipped.append(f"(a) {name}: {type(e).__name__}: {e}")
                continue
            times[name].append(time.perf_counter() - t0)
            if got[:50] != want or len(got) != len(xs):
                notes[name] = "WRONG RESULT"
    startup = []
    for _ in range(args.cpu_repeats):  # what a map with UDF processes pays before any item
        t0 = time.perf_counter()
        run(variants["DaftRunner(concurrency=2) (UDF processes)"], xs[:2])
        startup.append(time.perf_counter() - t0)
    return {
        "loops": loops,
        "spin_ms": ms,
        "n": len(xs),
        "batch_size": bs,
        "times": times,
        "notes": notes,
        "process_map_start_s": statistics.median(startup),
    }


def report_cpu(cpu):
    n, times = cpu["n"], cpu["times"]
    ref = statistics.median(times["Runner"]) if times.get("Runner") else float("nan")
    print(
        f"\n### (a) CPU-bound node: ~{cpu['spin_ms']:.2f} ms/item, {n:,} items, "
        f"B = {cpu['batch_size']}, {CORES} cores\n"
    )
    print("| variant | reps | median s | min s | items/s | speed-up vs Runner | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, ts in times.items():
        if not ts:
            print(f"| {name} | 0 | - | - | - | - | failed |")
            continue
        med = statistics.median(ts)
        print(
            f"| {name} | {len(ts)} | {med:.3f} | {min(ts):.3f} | {n / med:,.0f} | "
            f"{ref / med:.2f}x | {cpu['notes'][name]} |"
        )
    print(
        f"\nserial ideal {n * cpu['spin_ms'] / 1e3:.2f} s, limit {CORES:.1f}x. DaftRunner's "
        "default runs the UDF in Daft's threads of this process (pure Python holds the GIL); "
        "concurrency=N runs it in N UDF processes, which Daft starts for each query: a 2-item "
        f"map with concurrency=2 takes {cpu['process_map_start_s']:.2f} s (median)."
    )


# --------------------------------------------------------------------------- (b) W1 to parquet
W1_VARIANTS = (
    "Runner.map + StreamWriter",
    "DaftRunner.map + StreamWriter",
    "DaftRunner.map_dataframe + write_parquet",
    "Daft expressions + write_parquet",
)


def w1_child(variant: str, rows: int, batch_size: int) -> None:
    """One process: set up, write ``rows`` items to parquet, print one JSON line."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench_daft_") as tmp:
        out = Path(tmp) / "out"
        setup_mb = peak_rss_mb()
        t0 = time.perf_counter()
        if variant.startswith(("Runner", "DaftRunner.map +")):
            from hypernodes_chain import DaftRunner, Graph, Runner, node
            from hypernodes_chain.io import StreamWriter

            runner = Runner() if variant.startswith("Runner") else DaftRunner()
            graph = Graph(nodes=[node(f) for f in make_chain()], name="w1")
            writer = StreamWriter(out, format="parquet", max_lines_per_file=100_000)
            runner.map(graph, {"x": (x for x in range(rows))}, map_over="x",
                       batch_size=batch_size, writer=writer)  # fmt: skip
        else:
            import daft
            from daft import col

            df = daft.range(rows).select(col("id").alias("x"))
            if variant.startswith("DaftRunner"):
                from hypernodes_chain import DaftRunner, Graph, node

                graph = Graph(nodes=[node(f) for f in make_chain()], name="w1")
                df = DaftRunner().map_dataframe(graph, df, batch_size=batch_size)
            else:
                a = col("x") + 1
                b = a * 2
                df = df.select("x", a.alias("a"), b.alias("b"), (b - 3).alias("c"))
            df.write_parquet(str(out))
        run_s = time.perf_counter() - t0
        rss_mb = peak_rss_mb()
        files = sorted(out.rglob("*.parquet"))
        n = sum(pq.read_metadata(f).num_rows for f in files)
        total = sum(sum(pq.read_table(f, columns=["c"]).column(0).to_pylist()) for f in files)
        ok = n == rows and total == rows * (rows - 1) - rows
    print(json.dumps({"run_s": run_s, "rss_mb": rss_mb, "setup_rss_mb": setup_mb, "ok": ok}))


def w1_measure(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--w1-items", str(args.w1_items)]
    cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True)
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode or not lines:
        err = proc.stderr.decode().strip().splitlines() or ["?"]
        return {"failed": err[-1], "stderr": proc.stderr.decode()[-2000:]}
    return json.loads(lines[-1])


def section_w1(args, skipped):
    res: dict[str, list[dict]] = {v: [] for v in W1_VARIANTS}
    for r in range(args.w1_runs):  # alternating, one subprocess per run
        for name in res:
            print(f"  {name} subprocess ({r + 1}/{args.w1_runs}) ...", flush=True)
            m = w1_measure(name, args)
            if "failed" in m:
                print(m["stderr"], file=sys.stderr)
                skipped.append(f"(b) {name}: {m['failed']}")
            res[name].append(m)
    return {"n": args.w1_items, "batch_size": args.batch_size, "variants": res}


def report_w1(w1):
    n, res = w1["n"], w1["variants"]
    ok_runs = {k: [m for m in v if "failed" not in m] for k, v in res.items()}
    ref = ok_runs.get("Runner.map + StreamWriter") or []
    ref_s = statistics.median(m["run_s"] for m in ref) if ref else float("nan")
    print(
        f"\n### (b) W1 chain (3 cheap nodes) over {n:,} rows into parquet, B = "
        f"{w1['batch_size']:,}, each run in its own process\n"
    )
    print("| variant | runs | median µs/row | x Runner | peak RSS MB | RSS before MB | ok |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, runs in ok_runs.items():
        if not runs:
            print(f"| {name} | 0 | - | - | - | - | failed: {res[name][0]['failed']} |")
            continue
        med = statistics.median(m["run_s"] for m in runs)
        rss = max(m["rss_mb"] for m in runs)
        setup = max(m["setup_rss_mb"] for m in runs)
        ok = all(m["ok"] for m in runs)
        print(
            f"| {name} | {len(runs)} | {med * 1e6 / n:.3f} | {med / ref_s:.2f}x | {rss:.0f} | "
            f"{setup:.0f} | {ok} |"
        )
    print(
        "\npeak RSS = ru_maxrss of the variant's process, imports included ('RSS before': "
        "with pyarrow loaded, before the variant's own imports). Daft's expressions run in "
        "Rust: the limit for any Python UDF on Daft."
    )


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers here")
    parser.add_argument("--cpu-items", type=int, help="(a) items (2,000; --quick 400)")
    parser.add_argument("--cpu-batch-size", type=int, help="(a) batch size (items / 40)")
    parser.add_argument("--cpu-ms", type=float, default=2.0, help="(a) ms per call (2)")
    parser.add_argument("--w1-items", type=int, help="(b) rows (1,000,000; --quick 100,000)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="(b) batch size")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    args.cpu_items = args.cpu_items or cfg["cpu_items"]
    args.w1_items = args.w1_items or cfg["w1_items"]
    args.cpu_batch_size = args.cpu_batch_size or max(1, args.cpu_items // 40)
    args.cpu_repeats, args.w1_runs = cfg["cpu_repeats"], cfg["w1_runs"]
    if args.child:
        w1_child(args.child, args.w1_items, args.batch_size)
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    if set(only) - set(SECTIONS):
        parser.error(f"--only takes a subset of {SECTIONS}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Python {platform.python_version()} on {platform.platform()}")
    print(f"nproc: {len(os.sched_getaffinity(0))}, load average {load}")
    print("versions: " + ", ".join(f"{d} {version(d) or 'not installed'}" for d in VERSIONS))
    sizes = {k: getattr(args, k) for k in ("cpu_items", "cpu_batch_size", "w1_items", "batch_size")}
    print(f"sizes: {sizes}", flush=True)
    skipped: list[str] = []
    results: dict = {"env": {"python": platform.python_version(), "load": os.getloadavg()}}
    results["env"]["versions"] = {d: version(d) for d in VERSIONS}
    if "w1" in only:  # first, while this process is small (a child's ru_maxrss starts there)
        print("(b) W1 chain into parquet ...", flush=True)
        results["w1"] = section_w1(args, skipped)
    if "cpu" in only:
        print("(a) CPU-bound node ...", flush=True)
        results["cpu"] = section_cpu(args, skipped)
    if "cpu" in results:
        report_cpu(results["cpu"])
    if "w1" in results:
        report_w1(results["w1"])
    for s in skipped:
        print(f"skipped: {s}")
    results["skipped"] = skipped
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
