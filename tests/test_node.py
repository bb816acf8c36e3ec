from __future__ import annotations

import inspect

import pytest

from hypernodes_chain import Node, node


def test_default_output_name_is_function_name():
    @node
    def total(x: int, y: int = 2) -> int:
        return x + y

    assert isinstance(total, Node)
    assert total.outputs == ("total",)
    assert total.name == "total"
    assert total.inputs == ("x", "y")
    assert total.optional == frozenset({"y"})


def test_decorated_function_stays_callable_and_keeps_signature():
    @node(output_name="doubled")
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    assert double(3) == 6
    assert double(x=4) == 8
    assert double.__doc__ == "Twice x."
    assert double.__name__ == "double"
    assert list(inspect.signature(double).parameters) == ["x"]


def test_tuple_outputs_and_custom_name():
    @node(output_name=("q", "r"), name="divide")
    def divmod_(a: int, b: int) -> tuple[int, int]:
        return divmod(a, b)

    assert divmod_.outputs == ("q", "r")
    assert divmod_.name == "divide"
    assert divmod_(7, 2) == (3, 1)


def test_kinds_are_detected():
    @node
    def plain(x):
        return x

    @node
    async def coro(x):
        return x

    @node
    def gen(x):
        yield x

    @node
    async def agen(x):
        yield x

    assert [n.kind for n in (plain, coro, gen, agen)] == ["sync", "async", "gen", "agen"]


def test_rename_returns_a_renamed_copy():
    @node(output_name="y")
    def inc(x: int) -> int:
        return x + 1

    again = inc.rename(inputs={"x": "y"}, outputs={"y": "z"})
    assert again.inputs == ("y",) and again.outputs == ("z",)
    assert inc.inputs == ("x",) and inc.outputs == ("y",)
    assert again(1) == 2


def test_rename_unknown_names_is_an_error():
    @node
    def inc(x: int) -> int:
        return x + 1

    with pytest.raises(ValueError, match=r"unknown input 'nope'.*inputs are \['x'\]"):
        inc.rename(inputs={"nope": "y"})
    with pytest.raises(ValueError, match=r"unknown output 'zzz'"):
        inc.rename(outputs={"zzz": "y"})


def test_bad_output_name():
    with pytest.raises(TypeError, match="output_name must be a str or a tuple of str"):
        node(output_name=("a", 3))(lambda x: x)


def test_batch_generator_rejected():
    def gen(x):
        yield x

    with pytest.raises(TypeError, match="batch node 'gen' cannot be a generator"):
        node(batch=True)(gen)


def test_cache_flag_and_batch_flag():
    @node(cache=False, batch=True)
    def emb(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    assert emb.cache is False and emb.batch is True
    assert emb(["ab", "c"]) == [2, 1]
