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


# --- helpers a function calls by name ---------------------------------------------------

_counter = iter(range(10**6))


def load_module(folder: pathlib.Path, source: str, stem: str = "helpers_mod") -> object:
    """Write ``source`` to a fresh file and import it under a fresh module name."""
    name = f"{stem}_{next(_counter)}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HELPER_MODULE = """
def helper(x):
    return x * {factor}


def g4(x):
    return helper(x) + 1
"""


def test_editing_a_helper_changes_the_callers_fingerprint(tmp_path: pathlib.Path) -> None:
    one = load_module(tmp_path, HELPER_MODULE.format(factor=10))
    same = load_module(tmp_path, HELPER_MODULE.format(factor=10))
    other = load_module(tmp_path, HELPER_MODULE.format(factor=20))
    assert code_fingerprint(one.g4) == code_fingerprint(same.g4)  # type: ignore[attr-defined]
    assert code_fingerprint(one.g4) != code_fingerprint(other.g4)  # type: ignore[attr-defined]


def test_rebinding_a_helper_in_the_same_process_invalidates_the_memo(
    tmp_path: pathlib.Path,
) -> None:
    mod = load_module(tmp_path, HELPER_MODULE.format(factor=10))
    before = code_fingerprint(mod.g4)  # type: ignore[attr-defined]
    old = mod.helper  # type: ignore[attr-defined]
    exec("def helper(x):\n    return x * 20\n", vars(mod))  # a notebook cell, redefined
    assert mod.g4(1) == 21  # type: ignore[attr-defined]
    after = code_fingerprint(mod.g4)  # type: ignore[attr-defined]
    assert after != before
    mod.helper = old  # type: ignore[attr-defined]
    assert code_fingerprint(mod.g4) == before  # type: ignore[attr-defined]
    del mod.helper  # type: ignore[attr-defined]
    assert code_fingerprint(mod.g4) not in (before, after)  # type: ignore[attr-defined]


def test_notebook_cells_without_a_file_count_as_user_code() -> None:
    ns: dict[str, object] = {"__name__": "__main__"}
    exec(compile("def helper(x):\n    return x + 1\n", "<cell 1>", "exec"), ns)
    exec(compile("def node_fn(x):\n    return helper(x)\n", "<cell 2>", "exec"), ns)
    before = code_fingerprint(ns["node_fn"])  # type: ignore[arg-type]
    exec(compile("def helper(x):\n    return x + 2\n", "<cell 3>", "exec"), ns)
    assert code_fingerprint(ns["node_fn"]) != before  # type: ignore[arg-type]


def test_helpers_named_in_nested_code_are_followed(tmp_path: pathlib.Path) -> None:
    source = """
import functools


def helper(x):
    return x * {factor}


@functools.cache
def cached_helper(x):
    return x - {factor}


def in_comprehension(xs):
    return [helper(x) for x in xs]


def in_inner_function(x):
    def inner():
        return helper(x)
    return inner()


def in_lambda(x):
    return (lambda: helper(x))()


def through_cache(x):
    return cached_helper(x)
"""
    one = load_module(tmp_path, source.format(factor=1))
    two = load_module(tmp_path, source.format(factor=2))
    for name in ("in_comprehension", "in_inner_function", "in_lambda", "through_cache"):
        assert code_fingerprint(getattr(one, name)) != code_fingerprint(getattr(two, name)), name


def test_module_attributes_of_user_modules_are_followed(tmp_path: pathlib.Path) -> None:
    util_one = load_module(tmp_path, "def scale(x):\n    return x * 1\n", "util")
    util_two = load_module(tmp_path, "def scale(x):\n    return x * 2\n", "util")
    caller = load_module(tmp_path, "import json\n\ndef run(x):\n    return util.scale(x)\n")
    caller.util = util_one  # type: ignore[attr-defined]
    first = code_fingerprint(caller.run)  # type: ignore[attr-defined]
    caller.util = util_two  # type: ignore[attr-defined]
    assert code_fingerprint(caller.run) != first  # type: ignore[attr-defined]
    caller.util = util_one  # type: ignore[attr-defined]
    assert code_fingerprint(caller.run) == first  # type: ignore[attr-defined]
    exec("def scale(x):\n    return x * 3\n", vars(util_one))  # edited inside the module
    assert code_fingerprint(caller.run) != first  # type: ignore[attr-defined]


def test_standard_library_and_installed_packages_are_not_followed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
import json
import os
from json import dumps
from os.path import join
from hypothesis import given
from hypernodes_chain import hashing


def uses_json(x):
    return json.dumps(x) + dumps(x)


def uses_os_path(x):
    return os.path.join(x, "a") + join(x, "b")


def uses_packages(x):
    return given, hashing.combine(x)
"""
    mod = load_module(tmp_path, source)
    fps = {n: hashing.code_identity(getattr(mod, n)) for n in ("uses_json", "uses_os_path")}
    fps["uses_packages"] = hashing.code_identity(mod.uses_packages)  # type: ignore[attr-defined]
    assert all(refs == () for _, refs in fps.values())  # nothing followed, nothing to check
    # whatever those library functions are, the fingerprints stay
    monkeypatch.setattr(json, "dumps", lambda x: "patched")
    monkeypatch.setattr(os.path, "join", lambda *a: "patched")
    monkeypatch.setattr(hashing, "combine", lambda *a: "patched")
    hashing._code_memo.clear()
    for name, (fp, _) in fps.items():
        assert code_fingerprint(getattr(mod, name)) == fp, name


def test_mutual_recursion_terminates_and_both_sides_count(tmp_path: pathlib.Path) -> None:
    source = """
def helper_a(n):
    return 0 if n <= 0 else helper_b(n - 1) + {a}


def helper_b(n):
    return 0 if n <= 0 else helper_a(n - 1) + {b}


def caller(n):
    return helper_a(n)
"""
    base = load_module(tmp_path, source.format(a=1, b=1))
    assert base.caller(3) == 3  # type: ignore[attr-defined]
    fp = code_fingerprint(base.caller)  # type: ignore[attr-defined]
    assert fp == code_fingerprint(load_module(tmp_path, source.format(a=1, b=1)).caller)  # type: ignore[attr-defined]
    assert fp != code_fingerprint(load_module(tmp_path, source.format(a=2, b=1)).caller)  # type: ignore[attr-defined]
    assert fp != code_fingerprint(load_module(tmp_path, source.format(a=1, b=2)).caller)  # type: ignore[attr-defined]
    assert code_fingerprint(base.helper_a) != code_fingerprint(base.helper_b)  # type: ignore[attr-defined]


CHAIN_MODULE = """
def h1(x):
    return h2(x) + 1


def h2(x):
    return h3(x) + 1


def h3(x):
    return h4(x) + 1


def h4(x):
    return h5(x) + {h4}


def h5(x):
    return x + {h5}


def caller(x):
    return h1(x)
"""


def test_helpers_are_followed_four_calls_deep(tmp_path: pathlib.Path) -> None:
    def fp(h4: int, h5: int) -> str:
        mod = load_module(tmp_path, CHAIN_MODULE.format(h4=h4, h5=h5))
        return code_fingerprint(mod.caller)  # type: ignore[attr-defined]

    assert hashing._HELPER_DEPTH == 4
    base = fp(1, 1)
    assert fp(2, 1) != base  # h4 is four calls deep: followed
    assert fp(1, 2) == base  # h5 is five calls deep: beyond the limit


def test_a_function_without_helpers_records_nothing() -> None:
    def plain(x: int) -> int:
        return len(str(x)) + 1

    fp, refs = hashing.code_identity(plain)
    assert refs == ()
    assert hashing.code_identity(plain) == (fp, ())


def test_helper_fingerprints_are_stable_across_processes(tmp_path: pathlib.Path) -> None:
    mod = load_module(tmp_path, HELPER_MODULE.format(factor=10), "stable")
    path = pathlib.Path(mod.__file__)  # type: ignore[attr-defined]
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location({mod.__name__!r}, {str(path)!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
from hypernodes_chain.hashing import code_fingerprint
print(code_fingerprint(module.g4))
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == code_fingerprint(mod.g4)  # type: ignore[attr-defined]


def test_a_node_called_as_a_helper_is_followed(tmp_path: pathlib.Path) -> None:
    source = """
from hypernodes_chain import node


@node(output_name="clean")
def clean(text):
    return text.strip() * {factor}


def caller(text):
    return clean(text) + clean.func(text)
"""
    one = load_module(tmp_path, source.format(factor=1))
    two = load_module(tmp_path, source.format(factor=2))
    assert code_fingerprint(one.caller) != code_fingerprint(two.caller)  # type: ignore[attr-defined]
