"""A backend that leaves out a port method cannot be built.

``BaseTaskStore`` inherits the port Protocols explicitly; their methods are abstract, so a
backend missing one fails at instantiation (TypeError naming it) instead of inheriting the
Protocol's stub, which would answer None (e.g. ``get`` -> every task "unknown").
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from taskplatform.store import ports, record_ports
from taskplatform.store.base import BaseTaskStore


def _port_methods() -> list[str]:
    names: set[str] = set()
    for cls in ports.TaskStore.__mro__:
        if getattr(cls, "_is_protocol", False) and cls.__module__ in (ports.__name__, record_ports.__name__):
            names |= {
                name
                for name, value in vars(cls).items()
                if not name.startswith("__")
                and (inspect.isfunction(value) or isinstance(value, staticmethod))
            }
    return sorted(names)


def _left_to_backends() -> list[str]:
    """The port methods BaseTaskStore does not implement itself (each backend must)."""
    return [
        name
        for name in _port_methods()
        if getattr(next(c for c in BaseTaskStore.__mro__ if name in vars(c)), "_is_protocol", False)
    ]


def _backend_without(missing: str) -> type:
    def stub(*_args: Any, **_kwargs: Any) -> None:
        return None

    namespace = {name: stub for name in BaseTaskStore.__abstractmethods__ | set(_left_to_backends())}
    del namespace[missing]
    return type(f"Without_{missing}", (BaseTaskStore,), namespace)


def test_a_backend_missing_get_cannot_be_instantiated() -> None:
    backend = _backend_without("get")
    with pytest.raises(TypeError, match=r"abstract method.*\bget\b"):
        backend()


def test_the_same_backend_with_every_method_can() -> None:
    backend = _backend_without("get")
    complete = type("Complete", (backend,), {"get": lambda *_a, **_k: None})
    assert complete() is not None


@pytest.mark.parametrize("name", _left_to_backends())
def test_every_port_method_left_to_backends_is_abstract(name: str) -> None:
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        _backend_without(name)()


def test_backends_are_left_the_reads_inserts_outbox_and_rate_limits() -> None:
    left = set(_left_to_backends())
    assert {"get", "get_visible", "list", "create_many", "claim_pending_outbox", "reserve_rate"} <= left
    assert {"prune_rate_limits", "get_dead_letter", "add_audit", "open", "close", "ping"} <= left
