"""W5, async fan-out: AsyncRunner against plain asyncio.gather and its peers.

    python benchmarks/bench_w5_async.py [--quick]

W5 maps ``async def f(x): await asyncio.sleep(0.01); return x`` over 1,000 items with up to
1,000 calls in flight. A second table reports the overhead per async node call on W1's chain
(``x -> a=x+1 -> b=a*2 -> c=b-3``, 100,000 items). See benchmarks/README.md.

Also run as a script by the hypernodes interpreter (Python >= 3.12):
``python bench_w5_async.py --worker CONFIG_JSON`` prints one JSON line with hypernodes' times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HAMILTON_TELEMETRY_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
HYPERNODES_PYTHON = ROOT / ".venv312" / "bin" / "python"

SLEEP = 0.01
TARGET_S = 0.05
FULL = {"n": 1_000, "repeats": 5, "slow_repeats": 3, "hn_repeats": 1, "chain_n": 100_000}
QUICK = {"n": 1_000, "repeats": 3, "slow_repeats": 1, "hn_repeats": 1, "chain_n": 20_000}


async def f(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return x


# --------------------------------------------------------------------------- timing
async def atimed(run_once, repeats: int) -> list[float]:
    """Seconds for each of ``repeats`` awaits of ``run_once()`` (gc collected before each)."""
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        await run_once()
        out.append(time.perf_counter() - t0)
    return out


def timed(run_once, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        run_once()
        out.append(time.perf_counter() - t0)
    return out


def row(library: str, how: str, n: int, times: list[float], note: str = "") -> dict:
    return {"library": library, "how": how, "n": n, "times": times, "note": note}


def checked(rows: list[dict], got: list[int], n: int) -> None:
    if list(got) != list(range(n)):
        rows[-1]["note"] = (rows[-1]["note"] + " WRONG RESULT").strip()


# --------------------------------------------------------------------------- W5: ours + the limit
async def _w5_interleaved(cfg: dict) -> list[dict]:
    """asyncio.gather (the limit) and AsyncRunner.map, one repeat each per round, so both see
    the same machine state."""
    from hypernodes_chain import AsyncRunner, Graph, node

    n, xs = cfg["n"], list(range(cfg["n"]))
    graph = Graph(nodes=[node(f)])
    runner = AsyncRunner(max_concurrency=n)
    got: dict[str, list[int]] = {}

    async def gather_once():
        got["gather"] = await asyncio.gather(*(f(x) for x in xs))

    async def ours_once():
        rows = await runner.map(graph, inputs={"x": xs}, map_over="x", batch_size=n)
        got["ours"] = [r["f"] for r in rows]

    await gather_once()  # warm-up
    await ours_once()
    times: dict[str, list[float]] = {"gather": [], "ours": []}
    for _ in range(cfg["repeats"]):
        times["gather"] += await atimed(gather_once, 1)
        times["ours"] += await atimed(ours_once, 1)
    rows = [
        row("asyncio.gather", "`await asyncio.gather(*(f(x) for x in xs))`", n, times["gather"])
    ]
    checked(rows, got["gather"], n)
    rows.append(
        row(
            "hypernodes_chain",
            f"`AsyncRunner(max_concurrency={n}).map(graph, {{'x': xs}}, map_over='x', batch_size={n})`",
            n,
            times["ours"],
        )
    )
    checked(rows, got["ours"], n)
    return rows


def ours_rows(cfg: dict) -> list[dict]:
    return asyncio.run(_w5_interleaved(cfg))


# --------------------------------------------------------------------------- W5: peers
def hamilton_rows(cfg: dict) -> list[dict]:
    """Hamilton's async driver runs one graph execution per `execute`; its idiomatic map over
    scalars is one `execute` per item, here 1,000 of them at once under asyncio.gather."""
    from hamilton import ad_hoc_utils, async_driver

    n, xs = cfg["n"], list(range(cfg["n"]))

    async def main() -> list[dict]:
        mod = ad_hoc_utils.create_temporary_module(f, module_name="w5_module")
        dr = await async_driver.Builder().with_modules(mod).build()
        out: list[dict] = []

        async def once():
            out[:] = await asyncio.gather(*(dr.execute(["f"], inputs={"x": x}) for x in xs))

        await once()  # warm-up
        rows = [
            row(
                "hamilton",
                "`async_driver.Builder().build()`, 1,000 concurrent `await dr.execute(['f'], inputs={'x': x})` under `asyncio.gather`",
                n,
                await atimed(once, cfg["slow_repeats"]),
            )
        ]
        checked(rows, [r["f"] for r in out], n)
        return rows

    return asyncio.run(main())


def _f_in_thread(x: int) -> int:
    """pipefunc has no `async def` support (a coroutine function's output would be the
    coroutine), so each worker thread runs the coroutine to completion on its own loop."""
    return asyncio.run(f(x))


def pipefunc_rows(cfg: dict) -> list[dict]:
    """pipefunc: `Pipeline.map` with mapspec `x[i] -> y[i]` and a thread pool executor."""
    from concurrent.futures import ThreadPoolExecutor

    from pipefunc import Pipeline, pipefunc

    n, xs = cfg["n"], list(range(cfg["n"]))
    pipe = Pipeline([pipefunc(output_name="y", mapspec="x[i] -> y[i]")(_f_in_thread)])
    rows = []
    default_workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    for workers, label in [
        (n, f"{n:,} threads"),
        (None, f"default pool: {default_workers} threads"),
    ]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            out: dict = {}

            def once(pool=pool, out=out):
                out.update(pipe.map({"x": xs}, parallel=True, executor=pool, storage="dict"))

            once()  # warm-up (also starts the threads)
            rows.append(
                row(
                    "pipefunc",
                    f"`Pipeline.map(parallel=True, executor=ThreadPoolExecutor({workers}), storage='dict')`, {label}",
                    n,
                    timed(once, cfg["slow_repeats"]),
                    "sync wrapper `asyncio.run(f(x))` per item (no async-def support)",
                )
            )
            checked(rows, out["y"].output.tolist(), n)
    return rows


def hypernodes_worker(cfg: dict) -> dict:
    """hypernodes (Python >= 3.12): `Pipeline.map` over the async node; it runs items in
    sequence (SeqEngine, `asyncio.run` per async call)."""
    from hypernodes import Pipeline, node

    xs = list(range(cfg["n"]))
    pipe = Pipeline(nodes=[node(output_name="f")(f)])
    pipe.map(inputs={"x": xs[:10]}, map_over="x")  # warm-up
    out: list = []

    def once():
        out[:] = pipe.map(inputs={"x": xs}, map_over="x")

    times = timed(once, cfg["hn_repeats"])
    ok = [r["f"] for r in out] == xs
    return {"times": times, "ok": ok}


def hypernodes_rows(cfg: dict) -> list[dict]:
    import subprocess

    if not HYPERNODES_PYTHON.exists():
        raise ImportError(f"skipped (needs Python >= 3.12 at {HYPERNODES_PYTHON})")
    proc = subprocess.run(
        [str(HYPERNODES_PYTHON), __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        msg = f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        raise RuntimeError(msg)
    result = json.loads(lines[-1])
    if "skipped" in result:
        raise ImportError(result["skipped"])
    r = row(
        "hypernodes",
        "`Pipeline(nodes=[node(f)]).map(inputs={'x': xs}, map_over='x')` (SeqEngine: serial)",
        cfg["n"],
        result["times"],
        f"hypernodes {result['version']} on Python {result['python']}, subprocess",
    )
    rows = [r]
    if not result["ok"]:
        r["note"] += " WRONG RESULT"
    return rows


# --------------------------------------------------------------------------- W1 chain, async
def chain_rows(cfg: dict) -> list[dict]:
    """µs per item of the 3-node chain: async nodes under AsyncRunner against sync nodes under
    Runner and AsyncRunner, with two asyncio references (inline awaits; one task per item)."""
    from hypernodes_chain import AsyncRunner, Graph, Runner, node

    async def a(x: int) -> int:
        return x + 1

    async def b(a: int) -> int:
        return a * 2

    async def c(b: int) -> int:
        return b - 3

    def sa(x: int) -> int:
        return x + 1

    def sb(a: int) -> int:
        return a * 2

    def sc(b: int) -> int:
        return b - 3

    async_graph = Graph(nodes=[node(a), node(b), node(c)])
    sync_graph = Graph(
        nodes=[node(output_name="a")(sa), node(output_name="b")(sb), node(output_name="c")(sc)]
    )
    n, xs, reps = cfg["chain_n"], list(range(cfg["chain_n"])), cfg["repeats"]
    expected = [(x + 1) * 2 - 3 for x in xs]
    out: list = []
    rows: list[dict] = []

    def add(label, how, times, got):
        rows.append(row(label, how, n, [t * 1e6 / n for t in times]))
        if list(got) != expected:
            rows[-1]["note"] = "WRONG RESULT"

    # plain references
    def plain():
        out[:] = [sc(sb(sa(x))) for x in xs]

    plain()
    add("plain loop", "`[c(b(a(x))) for x in xs]`, sync functions", timed(plain, reps), out)

    async def inline():
        out[:] = [await c(await b(await a(x))) for x in xs]

    async def per_item_tasks(batch=1024):
        async def item(x):
            return await c(await b(await a(x)))

        res = []
        for s in range(0, n, batch):
            res += await asyncio.gather(*(item(x) for x in xs[s : s + batch]))
        out[:] = res

    asyncio.run(inline())
    add(
        "asyncio",
        "`[await c(await b(await a(x))) for x in xs]` (no concurrency)",
        asyncio.run(atimed(inline, reps)),
        out,
    )
    add(
        "asyncio",
        "one task per item: `gather` over chunks of 1,024, each task awaits a, b, c",
        asyncio.run(atimed(per_item_tasks, reps)),
        out,
    )

    # ours
    runner = Runner()

    def sync_runner():
        out[:] = [r["c"] for r in runner.map(sync_graph, inputs={"x": xs}, map_over="x")]

    sync_runner()
    add("hypernodes_chain", "`Runner().map`, sync nodes", timed(sync_runner, reps), out)

    for graph, kind in [(sync_graph, "sync"), (async_graph, "async")]:
        arunner = AsyncRunner()

        async def amap(graph=graph, arunner=arunner):
            out[:] = [r["c"] for r in await arunner.map(graph, inputs={"x": xs}, map_over="x")]

        async def timed_amap(amap=amap):
            await amap()  # warm-up
            return await atimed(amap, reps)

        add(
            "hypernodes_chain",
            f"`AsyncRunner().map` (max_concurrency=64), {kind} nodes",
            asyncio.run(timed_amap()),
            out,
        )
    return rows


# --------------------------------------------------------------------------- report
def guarded(name: str, fn, cfg: dict, skipped: list[str]) -> list[dict]:
    print(f"running {name} ...", flush=True)
    try:
        return fn(cfg)
    except ImportError as e:
        skipped.append(f"{name}: {e}")
        print(f"{name}: {e}", flush=True)
    except Exception as e:  # a peer that breaks skips itself
        traceback.print_exc()
        skipped.append(f"{name}: error {type(e).__name__}: {e}")
    return []


def w5_report(rows: list[dict]) -> None:
    base = next(
        (statistics.median(r["times"]) for r in rows if r["library"] == "asyncio.gather"), None
    )
    print(
        "\n### W5: 1,000 items of `await asyncio.sleep(0.01)`, up to 1,000 in flight (seconds per map)\n"
    )
    print("| library | how | n | reps | median (s) | min (s) | x gather | target | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        ratio = f"{med / base:,.1f}x" if base else "-"
        target = ""
        if r["library"] == "hypernodes_chain":
            target = f"{'PASS' if med <= TARGET_S else 'FAIL'} (<= {TARGET_S} s)"
        print(
            f"| {r['library']} | {r['how']} | {r['n']:,} | {len(r['times'])} | {med:.3f} | "
            f"{low:.3f} | {ratio} | {target} | {r['note']} |"
        )


def chain_report(rows: list[dict]) -> None:
    print("\n### Async overhead on W1's chain (x -> a -> b -> c), µs per item\n")
    print("| library | how | n | reps | median µs/item | min µs/item | µs per node call | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    inline = next((r for r in rows if "no concurrency" in r["how"]), None)
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        per_call = med / 3
        extra = ""
        if inline is not None and r["library"] == "hypernodes_chain" and "async nodes" in r["how"]:
            over = (med - statistics.median(inline["times"])) / 3
            extra = f"{over:.2f} µs/call over inline awaits"
        note = "; ".join(s for s in (r["note"], extra) if s)
        print(
            f"| {r['library']} | {r['how']} | {r['n']:,} | {len(r['times'])} | {med:,.2f} | "
            f"{low:,.2f} | {per_call:,.2f} | {note} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller chain")
    parser.add_argument("--skip-chain", action="store_true", help="W5 only")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _peers import version

    versions = {
        d: version(d) for d in ("hypernodes-chain", "pipefunc", "apache-hamilton")
    }  # hypernodes' version comes from its own interpreter, in its row's note
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc: {len(os.sched_getaffinity(0))}, load average {load}")
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    print(f"sizes: {cfg}", flush=True)
    skipped: list[str] = []
    rows = guarded("asyncio.gather + hypernodes_chain (interleaved)", ours_rows, cfg, skipped)
    for name, fn in [
        ("hamilton", hamilton_rows),
        ("pipefunc", pipefunc_rows),
        ("hypernodes (subprocess)", hypernodes_rows),
    ]:
        rows += guarded(name, fn, cfg, skipped)
    chain = [] if args.skip_chain else guarded("W1 chain, async", chain_rows, cfg, skipped)
    w5_report(rows)
    if chain:
        chain_report(chain)
    for s in skipped:
        print(f"skipped: {s}")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    try:
        import hypernodes  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "skipped (hypernodes not installed)"}))
        sys.exit(0)
    from importlib import metadata

    result = hypernodes_worker(json.loads(sys.argv[2]))
    result.update(version=metadata.version("hypernodes"), python=platform.python_version())
    print(json.dumps(result))
elif __name__ == "__main__":
    main()
