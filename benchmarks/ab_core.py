"""W1 and W2 of bench_core.py alone, for the hypernodes_chain that Python imports: A/B runs.

    PYTHONPATH=/path/to/old/src python benchmarks/ab_core.py   # a checkout of the old commit
    python benchmarks/ab_core.py                                 # this one

Alternate the two several times in one sitting and compare the medians: W1 maps the 3-node
chain over 100,000 items with ``Runner().map`` (µs per item), W2 runs the 20-node DAG 2,000
times with ``Runner().run`` (µs per run), exactly as bench_core.py does.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import make_chain, make_dag

import hypernodes_chain
from hypernodes_chain import Graph, Runner, node

N1, N2, REPEATS = 100_000, 2_000, 5


def main() -> None:
    runner = Runner()
    chain = Graph(nodes=[node(f) for f in make_chain()])
    dag = Graph(nodes=[node(f) for f in make_dag()])
    xs = list(range(N1))
    runner.map(chain, inputs={"x": xs[:1000]}, map_over="x")  # warm-up
    runner.run(dag, inputs={"x": 1})
    w1, w2 = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        runner.map(chain, inputs={"x": xs}, map_over="x")
        w1.append((time.perf_counter() - t0) / N1 * 1e6)
        t0 = time.perf_counter()
        for _ in range(N2):
            runner.run(dag, inputs={"x": 1})
        w2.append((time.perf_counter() - t0) / N2 * 1e6)
    where = Path(hypernodes_chain.__file__).resolve().parents[2]
    print(
        f"{where}: W1 {statistics.median(w1):.3f} µs/item, "
        f"W2 {statistics.median(w2):.2f} µs/run (medians of {REPEATS})"
    )


if __name__ == "__main__":
    main()
