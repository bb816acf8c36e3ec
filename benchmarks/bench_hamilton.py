"""A Hamilton dataflow mapped over many inputs: ours against Hamilton itself.

    python benchmarks/bench_hamilton.py [--quick]

One Hamilton module of 10 cheap nodes (a small DAG over ``x``). Ours converts it once with
`hypernodes_chain.hamilton.from_modules` and maps it with ``Runner().map`` over every item;
Hamilton runs ``driver.execute`` once per item, and its dynamic execution runs the same
nodes between a ``Parallelizable[int]`` producer and a ``Collect[int]`` collector (the
Parallelizable variant also runs through ours, where the block becomes a mapped nested
graph). The slow peers are timed on a sample of the items. Every library runs round-robin,
one repeat each per round; medians and minima in µs per item. Results are compared on the
sample (every output of every sampled item).
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from importlib import metadata
from typing import Any

FULL = {"n": 100_000, "execute": 1_000, "parallel": 300, "repeats": 5, "slow_repeats": 3}
QUICK = {"n": 10_000, "execute": 300, "parallel": 100, "repeats": 3, "slow_repeats": 2}
TARGET = 20.0  # ours at least this many times faster per item than Hamilton's execute

# name -> (parameters, expression): 10 cheap nodes, fan-in up to 2, one input `x`
NODES = {
    "n0": (["x"], "x + 1"),
    "n1": (["n0"], "n0 * 2"),
    "n2": (["n0", "n1"], "n0 + n1"),
    "n3": (["n2"], "n2 - 3"),
    "n4": (["n1", "n3"], "n1 * n3 % 1000"),
    "n5": (["n4"], "n4 + 7"),
    "n6": (["n2", "n5"], "n2 + n5"),
    "n7": (["n6"], "n6 // 2"),
    "n8": (["n3", "n7"], "n3 + n7"),
    "n9": (["n8", "n5"], "n8 - n5"),
}
OUTPUTS = list(NODES)


def make_module(name: str, parallel: bool = False) -> types.ModuleType:
    """The dataflow as a real module (its source in linecache). ``parallel``: ``x`` comes
    from a ``Parallelizable[int]`` over ``xs`` and ``collected`` gathers ``n9``."""
    lines = ["from hamilton.htypes import Collect, Parallelizable", ""]
    if parallel:
        lines += ["def x(xs: list) -> Parallelizable[int]:", "    yield from xs", ""]
    for node, (params, expr) in NODES.items():
        sig = ", ".join(f"{p}: int" for p in params)
        lines += [f"def {node}({sig}) -> int:", f"    return {expr}", ""]
    if parallel:
        lines += ["def collected(n9: Collect[int]) -> list:", "    return list(n9)", ""]
    text, filename = "\n".join(lines), f"<{name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(text, filename, "exec"), module.__dict__)
    return module


def make_plain_row() -> Callable[[int], dict[str, int]]:
    """The limit: the 10 expressions as one compiled function returning the outputs."""
    body = [f"    {node} = {expr}" for node, (_, expr) in NODES.items()]
    result = ", ".join(f"{node!r}: {node}" for node in NODES)
    text = "\n".join(["def row(x):", *body, f"    return {{{result}}}"])
    namespace: dict[str, Any] = {}
    exec(compile(text, "<bench_hamilton_plain>", "exec"), namespace)
    row: Callable[[int], dict[str, int]] = namespace["row"]
    return row


def expected(x: int) -> dict[str, int]:
    values: dict[str, Any] = {"x": x}
    for node, (_, expr) in NODES.items():
        values[node] = eval(expr, {}, values)
    del values["x"]
    return values


def timed(run_once: Callable[[], Any], units: int) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = run_once()
    return (time.perf_counter() - t0) * 1e6 / units, out


# --------------------------------------------------------------------------- the libraries
def contenders(cfg: dict[str, int]) -> list[tuple[str, str, int, Callable[[], Any]]]:
    """(library, how, items, run once) for each row; construction stays outside the timing."""
    from hamilton import driver

    from hypernodes_chain import Runner
    from hypernodes_chain.hamilton import from_modules

    plain_mod = make_module("bench_hamilton_flow")
    parallel_mod = make_module("bench_hamilton_parallel_flow", parallel=True)
    xs = list(range(cfg["n"]))
    sample_exec, sample_par = xs[: cfg["execute"]], xs[: cfg["parallel"]]
    graph, pgraph, runner = from_modules(plain_mod), from_modules(parallel_mod), Runner()
    dr = driver.Builder().with_modules(plain_mod).build()
    pdr = (
        driver.Builder()
        .with_modules(parallel_mod)
        .enable_dynamic_execution(allow_experimental_mode=True)
        .build()
    )

    plain_row = make_plain_row()

    def loop() -> list[dict[str, int]]:
        return [plain_row(x) for x in xs]

    def ours_map() -> Any:
        return runner.map(graph, inputs={"x": xs}, map_over="x", output_name=OUTPUTS)

    def ours_blocks() -> Any:
        return runner.run(pgraph, inputs={"xs": xs}, output_name="collected")["collected"]

    def hamilton_execute() -> Any:
        return [dr.execute(OUTPUTS, inputs={"x": x}) for x in sample_exec]

    def hamilton_parallel() -> Any:
        return pdr.execute(["collected"], inputs={"xs": sample_par})["collected"]

    # warm-ups: plans, imports, first-call caches
    runner.map(graph, inputs={"x": xs[:1000]}, map_over="x", output_name=OUTPUTS)
    runner.run(pgraph, inputs={"xs": xs[:1000]}, output_name="collected")
    dr.execute(OUTPUTS, inputs={"x": 0})
    pdr.execute(["collected"], inputs={"xs": xs[:3]})
    return [
        ("plain loop", "one compiled function per item (the limit)", len(xs), loop),
        ("hypernodes_chain", "Runner().map(from_modules(module))", len(xs), ours_map),
        (
            "hypernodes_chain",
            "Parallelizable module: Runner().run, block mapped",
            len(xs),
            ours_blocks,
        ),
        ("hamilton", "driver.execute per item", len(sample_exec), hamilton_execute),
        (
            "hamilton",
            "Parallelizable + Collect, dynamic execution",
            len(sample_par),
            hamilton_parallel,
        ),
    ]


def check(how: str, out: Any, cfg: dict[str, int]) -> str:
    """'' when the result equals the expected values (all of them, or the sampled ones)."""
    if how.startswith("Parallelizable"):
        want = [expected(x)["n9"] for x in range(len(out))]
        return "" if list(out) == want else "WRONG RESULT"
    rows = list(out)
    picks = range(0, len(rows), max(1, len(rows) // cfg["execute"]))
    ok = all(dict(rows[i]) == expected(i) for i in picks)
    return "" if ok else "WRONG RESULT"


# --------------------------------------------------------------------------- report
def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    cfg = QUICK if parser.parse_args().quick else FULL
    os.environ.setdefault("HAMILTON_TELEMETRY_ENABLED", "false")
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc: {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), load {load}")
    names = ("hypernodes-chain", "apache-hamilton", "pandas")
    print("versions: " + ", ".join(f"{d} {version(d)}" for d in names))
    print(f"sizes: {cfg}", flush=True)
    rows = contenders(cfg)
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    notes: dict[int, str] = {i: "" for i in range(len(rows))}
    for round_ in range(cfg["repeats"]):
        for i, (library, how, n, run_once) in enumerate(rows):
            if library == "hamilton" and round_ >= cfg["slow_repeats"]:
                continue
            per_item, out = timed(run_once, n)
            times[i].append(per_item)
            notes[i] = notes[i] or check(how, out, cfg)
        print(f"round {round_ + 1}/{cfg['repeats']} done", flush=True)
    medians = {i: statistics.median(t) for i, t in times.items()}
    ours = medians[1]
    print("\n| library | how | items | reps | median µs/item | min µs/item | x ours | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for i, (library, how, n, _) in enumerate(rows):
        ratio = medians[i] / ours
        print(
            f"| {library} | {how} | {n:,} | {len(times[i])} | {medians[i]:,.2f} | "
            f"{min(times[i]):,.2f} | {ratio:,.1f}x | {notes[i] or 'results equal'} |"
        )
    speedup = medians[3] / ours
    verdict = "PASS" if speedup >= TARGET else "FAIL"
    print(
        f"\nours (Runner().map) vs Hamilton execute per item: {speedup:,.1f}x faster "
        f"-> {verdict} (target >= {TARGET:.0f}x); vs Hamilton Parallelizable: "
        f"{medians[4] / ours:,.1f}x faster. Slow peers timed on the first {cfg['execute']:,} "
        f"(execute) and {cfg['parallel']:,} (Parallelizable) items."
    )


if __name__ == "__main__":
    main()
