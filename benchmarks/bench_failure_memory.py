"""Failure memory: peak RSS of a streamed map whose items fail, against one whose items don't.

One cheap node, ``y = x + 1``, raising ``ValueError`` for every tenth item in the failing
variant, over 1,000,000 items given as a generator, ``on_error="collect"``, into
``StreamWriter(dir, format=...)``. Each run is a subprocess of its own that reports its
``ru_maxrss``, so the peaks do not mix; the variants alternate, and the table shows the
median over the runs. Target: the failing map's median peak ≤ 1.2x the clean map's.

    python benchmarks/bench_failure_memory.py [--items N] [--repeats N] [--format parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TARGET = 1.2


def _child(items: int, failing: bool, fmt: str) -> dict[str, float]:
    from hypernodes_chain import Graph, Runner, node
    from hypernodes_chain.io import StreamWriter

    @node(output_name="y")
    def step(x: int) -> int:
        if failing and x % 10 == 0:
            msg = f"item {x} is a multiple of 10"
            raise ValueError(msg)
        return x + 1

    def xs() -> Iterator[int]:
        yield from range(items)

    with tempfile.TemporaryDirectory() as tmp:
        writer = StreamWriter(Path(tmp) / "out", format=fmt)  # type: ignore[arg-type]
        start = time.perf_counter()
        result = Runner().map(
            Graph([step]), {"x": xs()}, map_over="x", writer=writer, on_error="collect"
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        assert result.n_items == items, result
        assert result.n_failed == (items + 9) // 10 * failing, result
        kept = len(getattr(result.failures, "kept", result.failures))
    return {"peak_mb": peak, "seconds": seconds, "n_failed": result.n_failed, "kept": kept}


def _run(items: int, failing: bool, fmt: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--items", str(items), "--format", fmt]
    if failing:
        cmd.append("--failing")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="parquet")
    parser.add_argument("--failing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.items, args.failing, args.format)))
        return
    print(f"python {sys.version.split()[0]}, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"{args.items:,} items, format={args.format}, {args.repeats} runs per variant\n")
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for failing in (False, True):
            runs[failing].append(_run(args.items, failing, args.format))
    print("| variant | failed | kept in memory | peak RSS MB (median) | runs MB | median s |")
    print("|---|---:|---:|---:|---|---:|")
    peaks = {}
    for failing, label in ((False, "no failures"), (True, "10% failing")):
        rs = runs[failing]
        peaks[failing] = statistics.median(r["peak_mb"] for r in rs)
        every = ", ".join(f"{r['peak_mb']:.0f}" for r in rs)
        seconds = statistics.median(r["seconds"] for r in rs)
        print(
            f"| {label} | {rs[0]['n_failed']:,.0f} | {rs[0]['kept']:,.0f} | "
            f"{peaks[failing]:.0f} | {every} | {seconds:.2f} |"
        )
    ratio = peaks[True] / peaks[False]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"\nfailing / clean peak: {ratio:.2f}x (target <= {TARGET}x): {verdict}")


if __name__ == "__main__":
    main()
