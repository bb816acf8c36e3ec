"""Fingerprints: content-only, order-free, type-tagged, stable across processes."""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import importlib.util
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import uuid
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypernodes_chain import hashing
from hypernodes_chain.exceptions import CacheWarning
from hypernodes_chain.hashing import code_fingerprint, combine, fingerprint

SRC = pathlib.Path(hashing.__file__).resolve().parents[1]


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which types already warned, so each test sees its own first warning."""
    monkeypatch.setattr(hashing, "_warned", set())


# --- type tags --------------------------------------------------------------------------

Point = collections.namedtuple("Point", "x y")


class Color(enum.Enum):
    RED = 1


DISTINCT = [
    1, 1.0, "1", True, b"1", bytearray(b"1"), [1], (1,), {1}, frozenset({1}), {1: 1}, {"1": 1},
    0, 0.0, -0.0, False, None, "", b"", [], (), {}, set(), frozenset(), [[]], [()], 1j,
    range(1), Color.RED, Point(1, 2), (1, 2), collections.OrderedDict(a=1), {"a": 1},
    datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2), datetime.time(1, 2),
    datetime.timedelta(days=1), decimal.Decimal("1"), fractions.Fraction(1, 2), 0.5,
    uuid.UUID(int=1), pathlib.PurePosixPath("a"), "a", int, str, len, print, ...,
    [1, [2]], [[1], 2], ["a", "b"], ["ab"], ["a,b"], ("a", "b"), [1, "1"], ["1", 1],
]  # fmt: skip


def test_every_type_and_shape_has_its_own_fingerprint() -> None:
    fps = [fingerprint(v) for v in DISTINCT]
    assert None not in fps
    clashes = [(a, b) for i, a in enumerate(DISTINCT) for b in DISTINCT[i + 1 :]
               if fingerprint(a) == fingerprint(b)]  # fmt: skip
    assert clashes == []


def test_fingerprint_is_a_32_char_hex_string_and_deterministic() -> None:
    fp = fingerprint({"a": [1, 2.5, None], "b": {"c"}})
    assert fp is not None and len(fp) == 32 and int(fp, 16) >= 0
    assert fp == fingerprint({"b": {"c"}, "a": [1, 2.5, None]})
    assert fingerprint(float("nan")) == fingerprint(float("nan"))


@pytest.mark.parametrize(
    "value",
    [10**5000, -(10**400), "\ud800", "é€😀", b"\x00" * 100],
    ids=["huge-int", "negative-int", "lone-surrogate", "non-ascii", "nul-bytes"],
)
def test_awkward_scalars_hash(value: object) -> None:
    assert fingerprint(value) is not None
    assert fingerprint(value) == fingerprint(copy.copy(value))
    assert fingerprint([value]) is not None
    assert fingerprint({"k": value}) != fingerprint({"k": [value]})


# --- property tests ---------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)


def reordered(value: object, rnd: random.Random) -> object:
    """The same value, with every dict rebuilt in a shuffled insertion order."""
    if isinstance(value, dict):
        items = [(k, reordered(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    return value


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


@given(json_like, st.randoms(use_true_random=False))
def test_dict_insertion_order_does_not_matter(value: object, rnd: random.Random) -> None:
    assert fingerprint(reordered(value, rnd)) == fingerprint(value)


@given(st.lists(st.integers() | st.text() | st.tuples(st.text())), st.randoms())
def test_set_order_does_not_matter(items: list[object], rnd: random.Random) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert fingerprint(set(shuffled)) == fingerprint(set(items))
    assert fingerprint(frozenset(shuffled)) == fingerprint(frozenset(items))


@given(json_like, json_like)
def test_fingerprints_equal_exactly_when_values_equal(a: object, b: object) -> None:
    assert (fingerprint(a) == fingerprint(b)) == (canonical(a) == canonical(b))


@given(json_like)
def test_a_deep_copy_has_the_same_fingerprint(value: object) -> None:
    assert fingerprint(copy.deepcopy(value)) == fingerprint(value)
    assert fingerprint([value]) != fingerprint(value)


# --- across processes -------------------------------------------------------------------

VALUES = """[
    {"b": 2, "a": 1, "c": [1, 2.5, None, True]},
    {"name": "ada", "lang": "en", "n": 3, "ok": True},
    {"alpha", "beta", "gamma", "delta", "epsilon"},
    frozenset({"p", "q", "r", ("s", 1)}),
    {"k": {"nested", "set", "of", "strs"}, "j": {"x": b"bytes"}},
    "some text", b"raw", 12345, -0.0, 3.25, None,
    (datetime.datetime(2024, 5, 1, 12), decimal.Decimal("2.50"), uuid.UUID(int=7)),
    {("t", 1): {1, 2, 3}, frozenset({"a", "b"}): "v"},
]"""
CHILD = f"""
import datetime, decimal, json, uuid
from hypernodes_chain.hashing import fingerprint
print(json.dumps([fingerprint(v) for v in {VALUES}]))
"""


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_fingerprints_are_stable_across_processes(seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    here = [fingerprint(v) for v in eval(VALUES)]
    assert None not in here
    assert json.loads(out.stdout) == here


# --- objects ----------------------------------------------------------------------------


class Keyed:
    def __init__(self, key: str, noise: object) -> None:
        self.key = key
        self.noise = noise

    def __cache_key__(self) -> object:
        return self.key


class Plain:
    def __init__(self, a: object, hidden: object) -> None:
        self.a = a
        self._hidden = hidden


class Slotted:
    __slots__ = ("_cache", "a", "b")

    def __init__(self, a: object, b: object, cache: object) -> None:
        self.a, self.b, self._cache = a, b, cache


@dataclasses.dataclass
class Record:
    name: str
    score: float
    _scratch: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class OtherRecord:
    name: str
    score: float


def test_cache_key_wins_over_state() -> None:
    assert fingerprint(Keyed("k", noise=1)) == fingerprint(Keyed("k", noise=threading.Lock()))
    assert fingerprint(Keyed("k", 1)) != fingerprint(Keyed("j", 1))
    assert fingerprint(Keyed("k", 1)) != fingerprint("k")


def test_private_attributes_are_ignored() -> None:
    assert fingerprint(Plain(1, hidden="x")) == fingerprint(Plain(1, hidden=threading.Lock()))
    assert fingerprint(Plain(1, "x")) != fingerprint(Plain(2, "x"))
    assert fingerprint(Slotted(1, 2, "x")) == fingerprint(Slotted(1, 2, "y"))
    assert fingerprint(Slotted(1, 2, "x")) != fingerprint(Slotted(1, 3, "x"))


def test_dataclasses_hash_by_class_and_public_fields() -> None:
    assert fingerprint(Record("a", 1.0, [1])) == fingerprint(Record("a", 1.0, [2]))
    assert fingerprint(Record("a", 1.0)) != fingerprint(Record("a", 2.0))
    assert fingerprint(Record("a", 1.0)) != fingerprint(OtherRecord("a", 1.0))
    assert fingerprint([Record("a", 1.0), Record("b", 1.0)]) != fingerprint(
        [Record("a", 1.0), Record("a", 1.0)]
    )


def test_pydantic_models_hash_by_class_and_dump() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Summary(pydantic.BaseModel):
        title: str
        tags: list[str] = []
        _seen: int = pydantic.PrivateAttr(default=0)

    a, b = Summary(title="t", tags=["x"]), Summary(title="t", tags=["x"])
    b._seen = 5
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(Summary(title="t", tags=["y"]))
    # Two models dumped to temporary dicts in one call must not share a fingerprint.
    assert fingerprint([a, Summary(title="u")]) != fingerprint([a, a])


def test_numpy_arrays_hash_by_dtype_shape_and_content() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(6)
    assert fingerprint(a) == fingerprint(np.arange(6))
    assert fingerprint(a) != fingerprint(a.astype("float64"))
    assert fingerprint(a) != fingerprint(a.reshape(2, 3))
    assert fingerprint(a[::2]) == fingerprint(np.array([0, 2, 4]))
    assert fingerprint(np.float64(1.0)) != fingerprint(1.0)
    objects = np.array([[1], "1"], dtype=object)
    assert fingerprint(objects) != fingerprint(np.array([[1], 1], dtype=object))


def test_pandas_objects_hash_by_labels_dtypes_and_cells() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    assert fingerprint(df) == fingerprint(df.copy())
    assert fingerprint(df) != fingerprint(df.rename(columns={"a": "c"}))
    assert fingerprint(df) != fingerprint(df.astype({"a": "float64"}))
    assert fingerprint(df) != fingerprint(df.iloc[::-1])
    assert fingerprint(df["a"]) != fingerprint(df["a"].rename("z"))
    # Object cells: pandas' own hash goes through str(), where 1 and "1" would collide.
    assert fingerprint(pd.Series([1], dtype=object)) != fingerprint(pd.Series(["1"], dtype=object))
    lists = pd.DataFrame({"tokens": [["a"], ["b", "c"]]})
    assert fingerprint(lists) == fingerprint(lists.copy(deep=True))
    assert fingerprint(lists) != fingerprint(pd.DataFrame({"tokens": [["a"], ["b"]]}))


def test_functions_hash_by_code() -> None:
    def f(x: int) -> int:
        return x + 1

    def g(x: int) -> int:
        return x + 2

    assert fingerprint(f) == fingerprint(f)
    assert fingerprint(f) != fingerprint(g)
    assert fingerprint(functools.partial(f, 1)) != fingerprint(functools.partial(f, 2))


# --- degrade, don't crash ---------------------------------------------------------------


def test_unhashable_value_gives_none_and_warns_once_per_type(fresh_warnings: None) -> None:
    with pytest.warns(CacheWarning, match=r"_thread\.lock.*not cached.*__cache_key__") as rec:
        assert fingerprint(threading.Lock()) is None
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fingerprint(threading.Lock()) is None


def test_unhashable_inside_an_object_names_both_types(fresh_warnings: None) -> None:
    with pytest.warns(CacheWarning, match=r"test_hashing\.Plain.*holds a '_thread\.lock'"):
        assert fingerprint(Plain(threading.Lock(), 0)) is None


def test_open_files_and_generators_are_not_hashed(fresh_warnings: None, tmp_path) -> None:
    with pytest.warns(CacheWarning, match="generator"):
        assert fingerprint(x for x in range(3)) is None
    with open(tmp_path / "f.txt", "w") as handle, pytest.warns(CacheWarning, match="TextIO"):
        assert fingerprint({"out": handle}) is None


def test_self_reference_and_deep_nesting_give_none(fresh_warnings: None) -> None:
    loop: list[object] = []
    loop.append(loop)
    loop.append(loop)  # branching self-reference: must not explode exponentially
    with pytest.warns(CacheWarning, match="contains itself"):
        assert fingerprint(loop) is None
    deep: object = 0
    for _ in range(100):
        deep = (deep,)
    with pytest.warns(CacheWarning, match="nested deeper"):
        assert fingerprint(deep) is None
    shared = [1]
    assert fingerprint([shared, shared]) == fingerprint([[1], [1]])  # sharing is not a cycle


def test_a_failing_cache_key_gives_none(fresh_warnings: None) -> None:
    class Broken:
        def __cache_key__(self) -> object:
            raise RuntimeError("boom")

    with pytest.warns(CacheWarning, match="boom"):
        assert fingerprint(Broken()) is None


# --- combine and code -------------------------------------------------------------------


def test_combine_is_ordered_and_unambiguous() -> None:
    a, b = fingerprint(1), fingerprint(2)
    assert a is not None and b is not None
    assert combine(a, b) == combine(a, b)
    assert combine(a, b) != combine(b, a)
    assert combine("ab", "c") != combine("a", "bc")
    assert combine(a) != a


MODULE = '''
import math


{pad}def step(x):
    """Scale x."""
    return math.sqrt(x) * {factor}
'''


def load(path: pathlib.Path, source: str) -> object:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pipeline_steps", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.step  # type: ignore[attr-defined]


def test_code_fingerprint_follows_the_source(tmp_path: pathlib.Path) -> None:
    v1 = load(tmp_path / "v1" / "steps.py", MODULE.format(pad="", factor=2))
    v2 = load(tmp_path / "v2" / "steps.py", MODULE.format(pad="", factor=3))
    moved = load(tmp_path / "v3" / "steps.py", MODULE.format(pad="\n\n\n", factor=2))
    assert code_fingerprint(v1) == code_fingerprint(v1)
    assert code_fingerprint(v1) != code_fingerprint(v2)
    assert code_fingerprint(v1) == code_fingerprint(moved)
    assert fingerprint(v1) != fingerprint(v2)


def test_code_fingerprint_without_source_uses_bytecode() -> None:
    namespace: dict[str, object] = {}
    exec("def f(x):\n    return x + 1\ndef g(x):\n    return x + 2\n", namespace)
    f, g = namespace["f"], namespace["g"]
    assert code_fingerprint(f) == code_fingerprint(f)  # type: ignore[arg-type]
    assert code_fingerprint(f) != code_fingerprint(g)  # type: ignore[arg-type]


def test_code_fingerprint_of_lambdas_partials_and_builtins() -> None:
    inc, dbl = (lambda x: x + 1), (lambda x: x * 2)
    assert code_fingerprint(inc) != code_fingerprint(dbl)
    assert code_fingerprint(functools.partial(inc, 1)) != code_fingerprint(
        functools.partial(inc, 2)
    )
    assert code_fingerprint(len) == code_fingerprint(len) != code_fingerprint(print)
    assert code_fingerprint(Record) != code_fingerprint(OtherRecord)
