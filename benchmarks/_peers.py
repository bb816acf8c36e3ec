"""Workloads shared by every library, the timer, and the peer libraries' drivers.

Imported by bench_core.py. Also run as a script by the hypernodes interpreter (Python >= 3.12):
``python _peers.py --worker CONFIG_JSON`` prints one JSON line with hypernodes' rows.
Peer libraries are imported lazily, inside their functions, so a missing one only skips itself.
"""

from __future__ import annotations

import gc
import json
import linecache
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HAMILTON_TELEMETRY_ENABLED", "false")

CHAIN = ["a", "b", "c"]
LAYERS, WIDTH = 5, 4
DAG = [f"n{k}_{j}" for k in range(LAYERS) for j in range(WIDTH)]
CALLS = [0]  # calls of the W3 chain's first node: proves cold runs compute and warm runs hit


# --------------------------------------------------------------------------- workloads
def make_chain():
    """W1: x -> a=x+1 -> b=a*2 -> c=b-3, fresh function objects on every call."""

    def a(x: int) -> int:
        return x + 1

    def b(a: int) -> int:
        return a * 2

    def c(b: int) -> int:
        return b - 3

    return [a, b, c]


def make_counted_chain():
    """W3: the W1 chain whose first node counts its calls in CALLS."""

    def a(x: int) -> int:
        CALLS[0] += 1
        return x + 1

    def b(a: int) -> int:
        return a * 2

    def c(b: int) -> int:
        return b - 3

    return [a, b, c]


def expected_chain(xs):
    return [(x + 1) * 2 - 3 for x in xs]


def make_dag():
    """W2: 5 layers of 4 nodes; layer 0 reads x, node j of layer k reads nodes j and j+1
    (and j+2 for even j) of layer k-1. Real functions with their source in linecache."""
    src = []
    for k in range(LAYERS):
        for j in range(WIDTH):
            if k == 0:
                params, body = ["x"], f"x + {j}"
            else:
                deps = [j, (j + 1) % WIDTH] + ([(j + 2) % WIDTH] if j % 2 == 0 else [])
                params = [f"n{k - 1}_{d}" for d in deps]
                body = " + ".join(params)
            sig = ", ".join(f"{p}: int" for p in params)
            src.append(f"def n{k}_{j}({sig}) -> int:\n    return {body}\n")
    text, filename = "\n".join(src), "<bench_dag>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    ns: dict = {}
    exec(compile(text, filename, "exec"), ns)
    return [ns[name] for name in DAG]


def plan_dag_plain(funcs):
    """The W2 limit's plan: (name, function, parameter names) in topological order."""
    return [(f.__name__, f, f.__code__.co_varnames[: f.__code__.co_argcount]) for f in funcs]


def run_dag_plain(plan, x):
    """The W2 limit: call the 20 functions in order and collect every output in a dict."""
    values = {"x": x}
    for name, f, params in plan:
        values[name] = f(*[values[p] for p in params])
    del values["x"]
    return values


# --------------------------------------------------------------------------- timing
def row(workload, library, n, times, note=""):
    return {"workload": workload, "library": library, "n": n, "times": times, "note": note}


def timed(run_once, units, repeats):
    """µs per unit for each of `repeats` runs (gc collected before each run)."""
    out = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        run_once()
        out.append((time.perf_counter() - t0) * 1e6 / units)
    return out


def cold_warm(make, run, n, repeats_cold, repeats_warm, library):
    """W3 protocol. `make(dir)` builds a fresh cached runner (untimed); `run(obj, xs)` maps.
    Cold: a new empty dir per repeat. Warm: a fresh runner object on the last cold dir, so no
    in-memory layer of a previous run helps. Returns the cold and warm rows."""
    xs, notes = list(range(n)), []
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{library}_"))
    cold, warm = [], []
    try:
        for r in range(repeats_cold):
            obj, CALLS[0] = make(tmp / f"cold{r}"), 0
            cold += timed(lambda obj=obj: run(obj, xs), n, 1)
            if CALLS[0] != n:
                notes.append(f"cold run computed {CALLS[0]}/{n} items")
        for _ in range(repeats_warm):
            obj, CALLS[0] = make(tmp / f"cold{repeats_cold - 1}"), 0
            warm += timed(lambda obj=obj: run(obj, xs), n, 1)
            if CALLS[0]:
                notes.append(f"warm run recomputed {CALLS[0]}/{n} items")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = "; ".join(sorted(set(notes)))
    return [row("W3 cold", library, n, cold, note), row("W3 warm", library, n, warm, note)]


def check(rows, got, xs, library):
    """Append a note to the last row if `got` (the c values) is wrong."""
    if list(got) != expected_chain(xs):
        rows[-1]["note"] += f" WRONG RESULT from {library}"


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- pipefunc
def pipefunc_rows(cfg):
    """pipefunc: W1 `Pipeline.map` with mapspecs (parallel=False, storage="dict"); W2
    `Pipeline.run(leaves, full_output=True)`; W3 `cache_type="disk"` + `cache=True` nodes."""
    from pipefunc import Pipeline, pipefunc

    def chain(cache=False, counted=False):
        funcs = (make_counted_chain if counted else make_chain)()
        src = ["x", "a", "b"]
        return [
            pipefunc(output_name=name, mapspec=f"{s}[i] -> {name}[i]", cache=cache)(f)
            for f, name, s in zip(funcs, CHAIN, src, strict=True)
        ]

    reps = cfg["slow_repeats"]
    rows, xs = [], list(range(cfg["w1"]))
    pipe = Pipeline(chain())
    pipe.map({"x": xs[:1000]}, parallel=False, storage="dict")  # warm-up
    res = {}
    rows.append(
        row(
            "W1",
            "pipefunc",
            len(xs),
            timed(
                lambda: res.update(pipe.map({"x": xs}, parallel=False, storage="dict")),
                len(xs),
                reps,
            ),
        )
    )
    check(rows, res["c"].output.tolist(), xs, "pipefunc")

    dag = Pipeline([pipefunc(output_name=f.__name__)(f) for f in make_dag()])
    leaves, n = DAG[-WIDTH:], cfg["w2"]

    def w2():
        for _ in range(n):
            dag.run(leaves, full_output=True, kwargs={"x": 1})

    w2()
    rows.append(row("W2", "pipefunc", n, timed(w2, n, cfg["repeats"])))

    def make(d):
        kwargs = {"cache_dir": str(d), "lru_shared": False}
        return Pipeline(chain(cache=True, counted=True), cache_type="disk", cache_kwargs=kwargs)

    def run(p, xs):
        return p.map({"x": xs}, parallel=False, storage="dict")

    w3 = cold_warm(make, run, cfg["w3"], reps, reps, "pipefunc")
    w3[0]["note"] = (
        "cache_kwargs lru_shared=False (default is ~10x slower) " + w3[0]["note"]
    ).strip()
    return rows + w3


# --------------------------------------------------------------------------- hamilton
def hamilton_rows(cfg):
    """Hamilton: no row-wise map for scalars, so `Driver.execute(["a","b","c"], inputs={"x": x})`
    once per item (the fastest idiomatic way; Parallelizable/Collect adds a task per item).
    W2 `execute` of the 20 nodes; W3 `Builder().with_cache(path=...)`."""
    from hamilton import ad_hoc_utils, driver

    def module(funcs):
        return ad_hoc_utils.create_temporary_module(*funcs)

    reps = cfg["slow_repeats"]
    rows, xs = [], list(range(cfg["w1"]))
    dr = driver.Builder().with_modules(module(make_chain())).build()
    for x in xs[:1000]:  # warm-up
        dr.execute(CHAIN, inputs={"x": x})
    out = []

    def w1():
        out[:] = [dr.execute(CHAIN, inputs={"x": x}) for x in xs]

    rows.append(row("W1", "hamilton", len(xs), timed(w1, len(xs), reps), "execute per item"))
    check(rows, [r["c"] for r in out], xs, "hamilton")

    dag = driver.Builder().with_modules(module(make_dag())).build()
    n = cfg["w2"]

    def w2():
        for _ in range(n):
            dag.execute(DAG, inputs={"x": 1})

    w2()
    rows.append(row("W2", "hamilton", n, timed(w2, n, cfg["repeats"])))

    mod = module(make_counted_chain())

    def make(d):
        return driver.Builder().with_modules(mod).with_cache(path=str(d)).build()

    def run(dr, xs):
        return [dr.execute(CHAIN, inputs={"x": x}) for x in xs]

    n3 = min(cfg["w3"], cfg["w3_slow"])
    w3 = cold_warm(make, run, n3, reps, reps, "hamilton")
    w3[0]["note"] = ("execute per item " + w3[0]["note"]).strip()
    return rows + w3


# --------------------------------------------------------------------------- hypernodes
def hypernodes_rows(cfg):
    """hypernodes (runs under Python >= 3.12): W1 `Pipeline.map(inputs, map_over="x")`;
    W2 `Pipeline.run`; W3 `SeqEngine(cache=DiskCache(path))`."""
    from hypernodes import DiskCache, Pipeline, SeqEngine, node

    def chain(counted=False):
        funcs = (make_counted_chain if counted else make_chain)()
        return [node(output_name=f.__name__)(f) for f in funcs]

    reps = cfg["slow_repeats"]
    rows, xs = [], list(range(cfg["w1"]))
    pipe = Pipeline(nodes=chain())
    pipe.map(inputs={"x": xs[:1000]}, map_over="x")  # warm-up
    out = []
    rows.append(
        row(
            "W1",
            "hypernodes",
            len(xs),
            timed(
                lambda: out.__setitem__(slice(None), pipe.map(inputs={"x": xs}, map_over="x")),
                len(xs),
                reps,
            ),
        )
    )
    check(rows, [r["c"] for r in out], xs, "hypernodes")

    dag = Pipeline(nodes=[node(output_name=f.__name__)(f) for f in make_dag()])
    n = cfg["w2"]

    def w2():
        for _ in range(n):
            dag.run(inputs={"x": 1})

    w2()
    rows.append(row("W2", "hypernodes", n, timed(w2, n, cfg["repeats"])))

    def make(d):
        return Pipeline(nodes=chain(counted=True), engine=SeqEngine(cache=DiskCache(str(d))))

    def run(p, xs):
        return p.map(inputs={"x": xs}, map_over="x")

    n3 = min(cfg["w3"], cfg["w3_slow"])
    w3 = cold_warm(make, run, n3, 1, reps, "hypernodes")
    w3[0]["note"] = ("rewrites meta.json on every put: O(n^2) cold " + w3[0]["note"]).strip()
    return rows + w3


def hypernodes_subprocess(cfg, interpreter):
    """Run hypernodes_rows under `interpreter`; returns (rows, version) or (None, reason)."""
    import subprocess

    if not Path(interpreter).exists():
        return None, "skipped (needs Python >= 3.12)"
    proc = subprocess.run(
        [str(interpreter), __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return None, f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    result = json.loads(lines[-1])
    if "skipped" in result:
        return None, result["skipped"]
    return result["rows"], f"hypernodes {result['version']} on Python {result['python']}"


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    try:
        import hypernodes  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "skipped (hypernodes not installed)"}))
        sys.exit(0)
    rows = hypernodes_rows(json.loads(sys.argv[2]))
    print(
        json.dumps(
            {"rows": rows, "version": version("hypernodes"), "python": sys.version.split()[0]}
        )
    )
