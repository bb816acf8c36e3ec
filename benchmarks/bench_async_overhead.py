"""AsyncRunner overhead per item, and overlap of independent async nodes within one item.

    python benchmarks/bench_async_overhead.py [--quick]

(a) W1's chain ``x -> a=x+1 -> b=a*2 -> c=b-3`` over 100,000 items: the plain loop (the limit),
    ``Runner().map`` and ``AsyncRunner().map`` with sync nodes and with ``async def`` nodes,
    in µs per item. Target: AsyncRunner, sync nodes <= 1.5 µs/item.
(b) Two independent async nodes ``a(x)`` and ``b(x)`` (each ``await asyncio.sleep(0.02)``),
    both outputs requested, 50 items one at a time (an ``AsyncRunner().map`` of one item each,
    so only the overlap of the two nodes inside an item can help), in seconds per item; and
    ``AsyncRunner().run`` for one item.
    The limit is one node's time (``gather(a(x), b(x))`` per item, measured); the serial sum
    (``await a(x); await b(x)``) is what running the two nodes one after the other gives.
    Target: <= 1.25 x 0.02 s per item.

Every variant of a part runs round-robin, one repeat each per round, so the ratios compare the
same machine state. Self-contained: needs only hypernodes_chain. See benchmarks/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from importlib import metadata

SLEEP = 0.02
CHAIN_TARGET_US = 1.5
OVERLAP_TARGET_S = 1.25 * SLEEP
FULL = {"chain_n": 100_000, "chain_reps": 5, "overlap_n": 50, "overlap_reps": 5, "run_reps": 20}
QUICK = {"chain_n": 20_000, "chain_reps": 3, "overlap_n": 10, "overlap_reps": 3, "run_reps": 5}


# --------------------------------------------------------------------------- timing
def timed(fn) -> float:
    """Seconds of one call of ``fn()`` (gc collected before)."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


async def atimed(fn) -> float:
    """Seconds of one ``await fn()`` (gc collected before)."""
    gc.collect()
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def round_robin(variants: list[dict], reps: int) -> None:
    """One warm-up, then ``reps`` rounds of one timed repeat of every variant; each variant's
    ``once`` is a sync callable returning seconds. Times are appended to ``variant["times"]``."""
    for v in variants:
        v["once"]()  # warm-up
        v["times"] = []
    for _ in range(reps):
        for v in variants:
            v["times"].append(v["once"]())


# --------------------------------------------------------------------------- (a) chain
def chain_variants(cfg: dict) -> list[dict]:
    from hypernodes_chain import AsyncRunner, Graph, Runner, node

    def sa(x: int) -> int:
        return x + 1

    def sb(a: int) -> int:
        return a * 2

    def sc(b: int) -> int:
        return b - 3

    async def a(x: int) -> int:
        return x + 1

    async def b(a: int) -> int:
        return a * 2

    async def c(b: int) -> int:
        return b - 3

    sync_graph = Graph(
        nodes=[node(output_name="a")(sa), node(output_name="b")(sb), node(output_name="c")(sc)]
    )
    async_graph = Graph(nodes=[node(a), node(b), node(c)])
    xs = list(range(cfg["chain_n"]))
    expected = [(x + 1) * 2 - 3 for x in xs]
    got: dict[str, list[int]] = {}

    def plain():
        out = []
        append = out.append
        for x in xs:
            va = sa(x)
            vb = sb(va)
            append({"a": va, "b": vb, "c": sc(vb)})
        got["plain loop"] = [r["c"] for r in out]

    runner = Runner()

    def sync_runner():
        out = runner.map(sync_graph, inputs={"x": xs}, map_over="x")
        got["Runner"] = [r["c"] for r in out]

    def async_once(graph, key):
        arunner = AsyncRunner()

        async def amap():
            out = await arunner.map(graph, inputs={"x": xs}, map_over="x")
            got[key] = [r["c"] for r in out]

        return lambda: asyncio.run(atimed(amap))  # loop set-up outside the timed region

    variants = [
        ("plain loop", "for loop calling a, b, c; appends {'a', 'b', 'c'}", lambda: timed(plain)),
        ("Runner", "`Runner().map`, sync nodes", lambda: timed(sync_runner)),
        (
            "AsyncRunner sync",
            "`AsyncRunner().map` (max_concurrency=64), sync nodes",
            async_once(sync_graph, "AsyncRunner sync"),
        ),
        (
            "AsyncRunner async",
            "`AsyncRunner().map` (max_concurrency=64), async def nodes",
            async_once(async_graph, "AsyncRunner async"),
        ),
    ]
    rows = [
        {"key": k, "how": how, "once": once, "n": len(xs), "note": ""} for k, how, once in variants
    ]
    round_robin(rows, cfg["chain_reps"])
    for r in rows:
        r["times"] = [t * 1e6 / len(xs) for t in r["times"]]  # µs per item
        if got.get(r["key"]) != expected:
            r["note"] = "WRONG RESULT"
    return rows


# --------------------------------------------------------------------------- (b) overlap
async def sleep_a(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return x


async def sleep_b(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return -x


def overlap_variants(cfg: dict) -> list[dict]:
    from hypernodes_chain import AsyncRunner, Graph, node

    graph = Graph(nodes=[node(output_name="a")(sleep_a), node(output_name="b")(sleep_b)])
    n = cfg["overlap_n"]
    xs = list(range(n))
    expected = [{"a": x, "b": -x} for x in xs]
    got: dict[str, list[dict]] = {}

    async def gather_loop():
        out = []
        for x in xs:
            va, vb = await asyncio.gather(sleep_a(x), sleep_b(x))
            out.append({"a": va, "b": vb})
        got["limit"] = out

    async def serial_loop():
        got["serial"] = [{"a": await sleep_a(x), "b": await sleep_b(x)} for x in xs]

    async def ours_map():
        runner, out = AsyncRunner(), []
        for x in xs:  # items one at a time: a map of one item each
            out += await runner.map(graph, inputs={"x": [x]}, map_over="x", output_name=["a", "b"])
        got["map"] = out

    async def ours_run():
        res = await AsyncRunner().run(graph, inputs={"x": 7}, output_name=["a", "b"])
        got["run"] = expected if res == {"a": 7, "b": -7} else [res]

    def per_item(fn, items):
        return lambda: asyncio.run(atimed(fn)) / items

    def run_once():
        async def many():
            ts = [await atimed(ours_run) for _ in range(cfg["run_reps"])]
            return statistics.median(ts)

        return asyncio.run(many())

    rows = [
        {
            "key": "limit",
            "how": "per item `await asyncio.gather(a(x), b(x))`, items one at a time",
            "once": per_item(gather_loop, n),
            "n": n,
        },
        {
            "key": "serial",
            "how": "per item `await a(x); await b(x)` (serial sum)",
            "once": per_item(serial_loop, n),
            "n": n,
        },
        {
            "key": "map",
            "how": "per item `await AsyncRunner().map(graph, {'x': [x]}, map_over='x', "
            "output_name=['a', 'b'])`",
            "once": per_item(ours_map, n),
            "n": n,
        },
        {
            "key": "run",
            "how": f"`AsyncRunner().run(graph, {{'x': 7}}, output_name=['a', 'b'])`, "
            f"median of {cfg['run_reps']} runs per repeat",
            "once": run_once,
            "n": 1,
        },
    ]
    round_robin(rows, cfg["overlap_reps"])
    for r in rows:
        r["note"] = "" if got.get(r["key"]) == expected else "WRONG RESULT"
    return rows


# --------------------------------------------------------------------------- report
LABELS = {
    "plain loop": ("plain loop (limit)", ""),
    "Runner": ("hypernodes_chain", ""),
    "AsyncRunner sync": ("hypernodes_chain", "chain"),
    "AsyncRunner async": ("hypernodes_chain", ""),
    "limit": ("asyncio (limit)", ""),
    "serial": ("asyncio", ""),
    "map": ("hypernodes_chain", "overlap"),
    "run": ("hypernodes_chain", "overlap"),
}


def verdict(r: dict, med: float) -> str:
    kind = LABELS[r["key"]][1]
    if kind == "chain":
        ok = med <= CHAIN_TARGET_US
        return f"{'PASS' if ok else 'FAIL'} (<= {CHAIN_TARGET_US} µs/item)"
    if kind == "overlap":
        ok = med <= OVERLAP_TARGET_S
        return f"{'PASS' if ok else 'FAIL'} (<= 1.25 x {SLEEP} = {OVERLAP_TARGET_S:.3f} s/item)"
    return ""


def report(workload: str, title: str, unit: str, fmt: str, rows: list[dict]) -> None:
    base = statistics.median(rows[0]["times"])
    print(f"\n### {title}\n")
    print(
        f"| workload | library | how | n | reps | median ({unit}) | min ({unit}) | x limit | target | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        print(
            f"| {workload} | {LABELS[r['key']][0]} | {r['how']} | {r['n']:,} | "
            f"{len(r['times'])} | {med:{fmt}} | {low:{fmt}} | {med / base:,.2f}x | "
            f"{verdict(r, med)} | {r['note']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats")
    cfg = QUICK if parser.parse_args().quick else FULL
    try:
        ours = metadata.version("hypernodes-chain")
    except metadata.PackageNotFoundError:
        ours = "not installed"
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc: {len(os.sched_getaffinity(0))}, load average {load}")
    print(f"hypernodes-chain {ours}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"sizes: {cfg}", flush=True)
    print("running (a) W1 chain ...", flush=True)
    chain = chain_variants(cfg)
    print("running (b) two independent async nodes ...", flush=True)
    overlap = overlap_variants(cfg)
    report("A, W1 chain", "A: W1 chain x -> a -> b -> c", "µs/item", ",.2f", chain)
    report(
        "B, 2 async nodes",
        f"B: two independent `await asyncio.sleep({SLEEP})` nodes, items one at a time",
        "s/item",
        ".4f",
        overlap,
    )
    print(
        f"\nx limit: median over the first row of the part (plain loop; gather of both nodes, "
        f"~{SLEEP} s). Serial execution of the two nodes gives ~{2 * SLEEP} s/item."
    )


if __name__ == "__main__":
    main()
