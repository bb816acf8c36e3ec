"""How a node that asks for resources is called: its own invoker, with the resources added.

A node with ``tok=resource("tok")`` parameters (``Node.resources``) is called by its kind's
invoker (plain, async, generator, batch, LLM), wrapped here: each body first leases the
resources from the run's broker (``Settings.engines``; one `Either` effect, so an async
driver waits for a factory without blocking its loop), runs the kind's body with a step
whose function adds the live resources as keywords, and releases the leases when the body
ends (however it ends). Holding a lease keeps the broker from closing a resource in use.

The step with the resources added is made once per broker and kept (weakly), so a driver
that learns a node's speed by its step (`Rows.key`) sees one step per node. Its function
reads the live resource from the broker at each call: the body holds the lease, so the
value cannot change meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import hashing
from ..exceptions import ResourceError, UnknownResourceError
from ..node import Node
from ..plan import Step
from ._effects import Body, Either
from ._work import ColumnCall, Context, FlowFactory, Invoker, ItemCall, Keys, Settings

__all__ = ["ResourceInvoker"]


class ResourceInvoker:
    """The `Invoker` of a node that asks for resources: leases them around the body of
    ``own``, the invoker of the node's kind; its cache identity adds theirs."""

    def __init__(self, step: Step, make: Callable[[Step], Invoker]) -> None:
        self.step = step
        self.wanted: dict[str, str] = dict(step.node.resources)  # parameter -> resource
        self.names = tuple(dict.fromkeys(self.wanted.values()))
        self.own = make(step)
        self.cacheable = self.own.cacheable
        self._make = make
        self._bound: weakref.WeakKeyDictionary[Any, tuple[Step, Invoker]]
        self._bound = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def engine_of(self, node: Node[..., Any]) -> str | None:
        return self.own.engine_of(node)

    def fingerprint(self, node: Node[..., Any], settings: Settings) -> str | None:
        """The kind's identity, chained with each resource's (`resources.identity`). An
        unknown resource gives None (not cached): its body raises the clear error."""
        own = self.own.fingerprint(node, settings)
        broker = settings.engines
        if own is None or broker is None:
            return own
        parts = [own]
        for param, name in sorted(self.wanted.items()):
            try:
                identity = broker.resource_identity(name)
            except (UnknownResourceError, AttributeError):
                return None
            if identity is None:
                return None
            parts.append(f"{param}={name}:{identity}")
        return hashing.combine(*parts)

    def flow(self, call: ItemCall, ctx: Context, keys: Keys | None) -> FlowFactory | None:
        return self.own.flow(call, ctx, keys)

    def flows(
        self, call: ColumnCall, ctx: Context, keys: Callable[[int], Keys | None]
    ) -> list[FlowFactory] | None:
        return self.own.flows(call, ctx, keys)

    def item(self, call: ItemCall) -> Body:
        return (yield from self._leased(call, lambda own: own.item(call)))

    def column(self, call: ColumnCall) -> Body:
        return (yield from self._leased(call, lambda own: own.column(call)))

    def _leased(self, call: ItemCall | ColumnCall, body: Callable[[Invoker], Body]) -> Body:
        """Lease the resources, run the kind's body on the bound step, release them."""
        broker = _broker(call.settings, self.step.node.name, self.names[0])
        node = self.step.node.name
        leases = yield Either(
            _lease, (broker, self.names, node), lambda: _alease(broker, self.names, node)
        )
        step, own = self._bound_to(broker)
        call.step = step  # the kind's body reads the step (its function) from the call
        try:
            return (yield from body(own))
        finally:
            call.step = self.step
            for lease in leases:
                lease.release()

    def _bound_to(self, broker: Any) -> tuple[Step, Invoker]:
        """The step whose function adds ``broker``'s live resources, and its invoker."""
        found = self._bound.get(broker)
        if found is None:
            step = _bound_step(self.step, self.wanted, broker)
            with self._lock:
                found = self._bound.setdefault(broker, (step, self._make(step)))
        return found


class _WithResources:
    """The node's function, called with the live resources of a broker added."""

    def __init__(self, func: Callable[..., Any], wanted: dict[str, str], broker: Any) -> None:
        self.func = func
        self.__wrapped__ = func  # type hints, kind and source are the function's
        self.wanted = tuple(wanted.items())
        self.broker = weakref.ref(broker)  # the broker keys the memo that holds this

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        broker = self.broker()
        for param, name in self.wanted:
            kwargs[param] = broker.leased(name)  # type: ignore[union-attr]
        return self.func(*args, **kwargs)


def _bound_step(step: Step, wanted: dict[str, str], broker: Any) -> Step:
    node = step.node._copy()
    node.func = _WithResources(step.node.func, wanted, broker)
    # positional calls stay right only while every resource parameter comes after the
    # parameters given positionally (or is keyword-only); otherwise call by keyword
    params = inspect.signature(step.node.func).parameters
    order = list(params)
    last = max((order.index(p) for p in step.params), default=-1)
    after = all(
        order.index(p) > last or params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in wanted
    )
    return dataclasses.replace(step, node=node, positional=step.positional and after)


def _broker(settings: Settings | None, node: str, name: str) -> Any:
    broker = None if settings is None else settings.engines
    if broker is None:
        msg = (
            f"node {node!r} asks for resource {name!r}, but the runner has no resources: "
            f"pass Runner(resources={{{name!r}: factory_or_object}})"
        )
        raise UnknownResourceError(msg)
    return broker


def _lease(broker: Any, names: Sequence[str], node: str) -> list[Any]:
    leases: list[Any] = []
    try:
        for name in names:
            with _named(name, node):
                leases.append(broker.lease(name))
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return leases


async def _alease(broker: Any, names: Sequence[str], node: str) -> list[Any]:
    leases: list[Any] = []
    try:
        for name in names:
            with _named(name, node):
                leases.append(await broker.alease(name))
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return leases


@contextlib.contextmanager
def _named(name: str, node: str) -> Iterator[None]:
    """Say which node asked, for an unknown name or a factory that raised."""
    try:
        yield
    except UnknownResourceError as exc:
        msg = f"node {node!r} asks for {exc}"
        raise UnknownResourceError(msg) from None
    except Exception as exc:
        msg = f"resource {name!r} for node {node!r} could not be built: {type(exc).__name__}: {exc}"
        raise ResourceError(msg, name, node) from exc
