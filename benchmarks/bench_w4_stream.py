"""W4, streaming map: the 3-node chain over 1,000,000 items into parquet shards.

    python benchmarks/bench_w4_stream.py [--rows N] [--chunk N] [--repeats N] [--only a,b]
                                         [--display devnull|file|tty] [--profile]

hypernodes_chain maps ``x -> a=x+1 -> b=a*2 -> c=b-3`` through ``Runner().map(...,
writer=StreamWriter(out, format="parquet", max_lines_per_file=100_000))`` (default batch size)
with the progress display on. Next to it: a hand-written loop that calls the three functions
and writes each 100,000-row chunk with ``pq.write_table`` (the limit), and the peers
(pipefunc, Apache Hamilton, hypernodes), each chunked by hand into 100,000-item chunks, since
none of them streams, each chunk written with pyarrow. Every variant writes the same columns
(``_index, x, a, b, c``) and runs in its own process, so its peak RSS (``ru_maxrss``) is its
own; the result is checked (row count and the sum of ``c``) after the timed region.

"run s" is the time from building the graph to the last shard closed (imports excluded);
"process s" is the whole child process as the parent saw it (interpreter start and imports
included). ``--display``: ``devnull`` (default) draws the live display on a terminal console
that writes to /dev/null, so rich refreshes it as in a real terminal; ``file`` draws to a
non-terminal file (printed once at the end); ``tty`` draws on this process's stderr.
``--profile`` runs hypernodes_chain once more under cProfile and tracemalloc and prints
where the time and the memory go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _peers  # noqa: E402  (stdlib-only at import time, so the Python 3.12 child can use it)

ROOT = HERE.parent
HYPERNODES_PYTHON = ROOT / ".venv312" / "bin" / "python"
TARGET_S, TARGET_MB = 4.0, 150.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _write_chunk(out: Path, shard: int, xs: list[int], a: list, b: list, c: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"_index": xs, "x": xs, "a": a, "b": b, "c": c})
    pq.write_table(table, out / f"{shard:03d}.parquet")


def _chunks(rows: int, chunk: int):
    for shard, start in enumerate(range(0, rows, chunk)):
        yield shard, list(range(start, min(start + chunk, rows)))


# --------------------------------------------------------------------------- variants
def run_limit(out: Path, rows: int, chunk: int, display: str) -> None:
    """The limit: a plain loop over the functions, one ``pq.write_table`` per chunk."""
    fa, fb, fc = _peers.make_chain()
    out.mkdir(parents=True)
    for shard, xs in _chunks(rows, chunk):
        a = [fa(x) for x in xs]
        b = [fb(v) for v in a]
        c = [fc(v) for v in b]
        _write_chunk(out, shard, xs, a, b, c)


def _display_console(display: str):
    from rich.console import Console

    if display == "tty":
        return Console(stderr=True)
    if display == "file":
        return Console(file=open(os.devnull, "w"), width=120)
    return Console(file=open(os.devnull, "w"), force_terminal=True, width=120)


def run_ours(out: Path, rows: int, chunk: int, display: str) -> None:
    """``Runner(callbacks=[ProgressCallback(...)]).map(..., writer=StreamWriter(...))``."""
    from hypernodes_chain import Graph, Runner, node
    from hypernodes_chain.io import StreamWriter

    graph = Graph(nodes=[node(f) for f in _peers.make_chain()], name="w4")
    callbacks = []
    if display != "none":
        from hypernodes_chain.progress import ProgressCallback

        console = _display_console(display)
        callbacks.append(ProgressCallback(console=console, graph=graph, enabled=True))
    writer = StreamWriter(out, format="parquet", max_lines_per_file=chunk)
    result = Runner(callbacks=callbacks).map(
        graph, inputs={"x": range(rows)}, map_over="x", writer=writer
    )
    assert result.n_ok == rows, result


def run_ours_no_display(out: Path, rows: int, chunk: int, display: str) -> None:
    run_ours(out, rows, chunk, "none")


def run_pipefunc(out: Path, rows: int, chunk: int, display: str) -> None:
    """``Pipeline.map({"x": chunk}, parallel=False, storage="dict")`` per chunk."""
    from pipefunc import Pipeline, pipefunc

    funcs, src = _peers.make_chain(), ["x", "a", "b"]
    pipe = Pipeline(
        [
            pipefunc(output_name=name, mapspec=f"{s}[i] -> {name}[i]")(f)
            for f, name, s in zip(funcs, _peers.CHAIN, src)
        ]
    )
    out.mkdir(parents=True)
    for shard, xs in _chunks(rows, chunk):
        res = pipe.map({"x": xs}, parallel=False, storage="dict")
        a, b, c = (res[n].output.tolist() for n in _peers.CHAIN)
        _write_chunk(out, shard, xs, a, b, c)


def run_hamilton(out: Path, rows: int, chunk: int, display: str) -> None:
    """``Driver.execute(["a", "b", "c"], inputs={"x": x})`` per item, per chunk."""
    from hamilton import ad_hoc_utils, driver

    module = ad_hoc_utils.create_temporary_module(*_peers.make_chain())
    dr = driver.Builder().with_modules(module).build()
    out.mkdir(parents=True)
    for shard, xs in _chunks(rows, chunk):
        res = [dr.execute(_peers.CHAIN, inputs={"x": x}) for x in xs]
        a, b, c = ([r[n] for r in res] for n in _peers.CHAIN)
        _write_chunk(out, shard, xs, a, b, c)


def run_hypernodes(out: Path, rows: int, chunk: int, display: str) -> None:
    """``Pipeline.map(inputs={"x": chunk}, map_over="x")`` per chunk (Python >= 3.12)."""
    from hypernodes import Pipeline, node

    pipe = Pipeline(nodes=[node(output_name=f.__name__)(f) for f in _peers.make_chain()])
    out.mkdir(parents=True)
    for shard, xs in _chunks(rows, chunk):
        res = pipe.map(inputs={"x": xs}, map_over="x")
        a, b, c = ([r[n] for r in res] for n in _peers.CHAIN)
        _write_chunk(out, shard, xs, a, b, c)


VARIANTS = {
    "pyarrow loop (limit)": run_limit,
    "hypernodes_chain": run_ours,
    "hypernodes_chain, no display": run_ours_no_display,
    "pipefunc": run_pipefunc,
    "hamilton": run_hamilton,
    "hypernodes": run_hypernodes,
}
KEYS = {
    "limit": "pyarrow loop (limit)",
    "ours": "hypernodes_chain",
    "ours-nodisplay": "hypernodes_chain, no display",
    "pipefunc": "pipefunc",
    "hamilton": "hamilton",
    "hypernodes": "hypernodes",
}
VERSIONS = {
    "hypernodes_chain": "hypernodes-chain",
    "hypernodes_chain, no display": "hypernodes-chain",
    "pipefunc": "pipefunc",
    "hamilton": "apache-hamilton",
    "hypernodes": "hypernodes",
    "pyarrow loop (limit)": "pyarrow",
}


# --------------------------------------------------------------------------- child process
# pa.table() of Python lists imports pandas when installed (+0.5 s, +50 MB): the variants
# that write with pa.table() get it imported before the timer (its memory still counts).
IMPORTS = {
    "pyarrow loop (limit)": ["pandas"],
    "hypernodes_chain": ["hypernodes_chain", "hypernodes_chain.io", "hypernodes_chain.progress"],
    "hypernodes_chain, no display": ["hypernodes_chain", "hypernodes_chain.io"],
    "pipefunc": ["pipefunc", "pandas"],
    "hamilton": ["hamilton.driver", "hamilton.ad_hoc_utils", "pandas"],
    "hypernodes": ["hypernodes", "pandas"],
}


def child(variant: str, rows: int, chunk: int, display: str) -> None:
    import importlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    for module in IMPORTS[variant]:  # imports stay outside the timed region
        try:
            importlib.import_module(module)
        except ImportError:
            if module != "pandas":
                raise
    del pa

    with tempfile.TemporaryDirectory(prefix="bench_w4_") as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        VARIANTS[variant](out, rows, chunk, display)
        run_s = time.perf_counter() - start
        rss = _peak_rss_mb()
        files = sorted(out.glob("*.parquet"))
        n = sum(pq.read_metadata(f).num_rows for f in files)
        total = sum(sum(pq.read_table(f, columns=["c"]).column(0).to_pylist()) for f in files)
        ok = n == rows and total == rows * (rows - 1) - rows  # sum((x+1)*2-3) = n(n-1) - n
    print(
        json.dumps(
            {
                "run_s": run_s,
                "rss_mb": rss,
                "files": len(files),
                "ok": ok,
                "version": _peers.version(VERSIONS[variant]),
                "python": platform.python_version(),
            }
        )
    )


def measure(variant: str, args: argparse.Namespace) -> dict:
    python = sys.executable
    if variant == "hypernodes":
        if not HYPERNODES_PYTHON.exists():
            return {"skipped": "skipped (needs .venv312/bin/python, Python >= 3.12)"}
        python = str(HYPERNODES_PYTHON)
    cmd = [python, __file__, "--child", variant, "--rows", str(args.rows)]
    cmd += ["--chunk", str(args.chunk), "--display", args.display]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=None if args.display == "tty" else subprocess.PIPE
    )
    process_s = time.perf_counter() - start
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode or not lines:
        err = (proc.stderr or b"").decode().strip().splitlines() or ["?"]
        return {"skipped": f"failed: {err[-1]}"}
    result = json.loads(lines[-1])
    result["process_s"] = process_s
    return result


# --------------------------------------------------------------------------- profiling
def profile(rows: int, chunk: int, display: str) -> None:
    """hypernodes_chain once under cProfile, once under tracemalloc; prints the top entries."""
    import cProfile
    import pstats
    import tracemalloc

    with tempfile.TemporaryDirectory(prefix="bench_w4_prof_") as tmp:
        prof = cProfile.Profile()
        prof.enable()
        run_ours(Path(tmp) / "a", rows, chunk, display)
        prof.disable()
        print("\n### cProfile: hypernodes_chain, top 25 by own time\n")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        tracemalloc.start(10)
        run_ours(Path(tmp) / "b", rows, chunk, display)
        peak = tracemalloc.get_traced_memory()[1]
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
    print(f"\n### tracemalloc: peak {peak / 2**20:.1f} MiB of Python allocations; live at end:\n")
    for stat in snap.statistics("lineno")[:12]:
        print(stat)


# --------------------------------------------------------------------------- report
def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    limit = results.get("pyarrow loop (limit)")
    limit_s = statistics.median(r["run_s"] for r in limit) if limit else float("nan")
    print(
        "\n| library | run s (median) | min | process s | peak RSS MB | x limit | files | ok | target | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for name, runs in results.items():
        ok_runs = [r for r in runs if "skipped" not in r]
        if not ok_runs:
            print(f"| {name} | - | - | - | - | - | - | - | - | {runs[0]['skipped']} |")
            continue
        med = statistics.median(r["run_s"] for r in ok_runs)
        low = min(r["run_s"] for r in ok_runs)
        proc_s = statistics.median(r["process_s"] for r in ok_runs)
        rss = max(r["rss_mb"] for r in ok_runs)
        target = ""
        if name.startswith("hypernodes_chain"):
            passed = med <= TARGET_S and rss <= TARGET_MB
            target = f"{'PASS' if passed else 'FAIL'} (<= {TARGET_S:g} s, <= {TARGET_MB:g} MB)"
        note = f"{name.split(',')[0]} {ok_runs[0]['version']}, Python {ok_runs[0]['python']}"
        if len(ok_runs) > 1:
            note += f", {len(ok_runs)} runs"
        print(
            f"| {name} | {med:.2f} | {low:.2f} | {proc_s:.2f} | {rss:.0f} | {med / limit_s:.1f}x | "
            f"{ok_runs[0]['files']} | {all(r['ok'] for r in ok_runs)} | {target} | {note} |"
        )
    print(
        f"\n{args.rows:,} items, chunks/shards of {args.chunk:,} rows, display {args.display!r}; "
        "run s excludes imports, process s includes interpreter start; peak RSS is ru_maxrss."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per shard / peer chunk")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours and the limit")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(KEYS)}")
    parser.add_argument("--display", choices=("devnull", "file", "tty"), default="devnull")
    parser.add_argument("--profile", action="store_true", help="profile hypernodes_chain")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.chunk, args.display)
        return
    names = [KEYS[k.strip()] for k in args.only.split(",") if k.strip()] or list(VARIANTS)
    print(f"Python {platform.python_version()} on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc {len(os.sched_getaffinity(0))}, load average {load}", flush=True)
    fast = [n for n in names if n.startswith(("hypernodes_chain", "pyarrow"))]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):  # ours and the limit interleaved: same machine state
        for name in fast:
            print(f"running {name} ({r + 1}/{args.repeats}) ...", flush=True)
            results[name].append(measure(name, args))
    for name in names:
        if name not in fast:
            print(f"running {name} ...", flush=True)
            results[name].append(measure(name, args))
    report(results, args)
    if args.profile:
        profile(args.rows, args.chunk, args.display)


if __name__ == "__main__":
    main()
