"""Every backend implements every port with the port's own signature.

Static typing checks assignments to a port where one is written; this checks every backend class
against every port method, whether or not a service assigns it: the parameters (names, kinds,
defaults, annotations as written) and the return annotation must be the port's, and the method
must be implemented (not the port's stub).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from taskplatform.store import ports, record_ports
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.sql import SqlTaskStore

BACKENDS = [SqlTaskStore, MongoTaskStore, MemoryTaskStore]
PORTS = [
    cls
    for cls in ports.TaskStore.__mro__
    if getattr(cls, "_is_protocol", False)
    and cls.__module__ in (ports.__name__, record_ports.__name__)
    and cls is not ports.TaskStore
]


def _methods(port: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(port).items()
        if not name.startswith("__") and (inspect.isfunction(value) or isinstance(value, staticmethod))
    )


PORT_METHODS = [(port, name) for port in PORTS for name in _methods(port)]


def _shape(function: Any) -> dict[str, Any]:
    """What must agree: each parameter's name, kind, default and annotation, the return
    annotation, and whether it is a coroutine function."""
    signature = inspect.signature(function)
    return {
        "parameters": [(p.name, p.kind.name, p.default, p.annotation) for p in signature.parameters.values()],
        "returns": signature.return_annotation,
        "coroutine": inspect.iscoroutinefunction(function),
    }


def _defined_in(backend: type, name: str) -> type:
    return next(cls for cls in backend.__mro__ if name in vars(cls))


def test_the_ports_cover_the_whole_store_interface() -> None:
    names = {name for _port, name in PORT_METHODS}
    assert len(PORTS) >= 10
    assert {"get", "try_set_running", "claim_pending_outbox", "upsert_dead_letter", "reserve_rate"} <= names
    assert {"answers", "purge_finished", "list_audit", "now", "sync_clock"} <= names


def test_no_method_is_declared_by_two_ports() -> None:
    seen: dict[str, str] = {}
    for port, name in PORT_METHODS:
        assert name not in seen, f"{name} is declared by {seen[name]} and {port.__name__}"
        seen[name] = port.__name__


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
@pytest.mark.parametrize(("port", "name"), PORT_METHODS, ids=[f"{p.__name__}.{n}" for p, n in PORT_METHODS])
def test_each_backend_method_has_the_ports_signature(backend: type, port: type, name: str) -> None:
    owner = _defined_in(backend, name)
    assert not getattr(owner, "_is_protocol", False), (
        f"{backend.__name__}.{name} is not implemented: only the port {owner.__name__} declares it"
    )
    implemented, declared = _shape(getattr(backend, name)), _shape(getattr(port, name))
    assert implemented == declared, (
        f"{backend.__name__}.{name} (in {owner.__name__}) differs from {port.__name__}.{name}:\n"
        f"  backend: {implemented}\n  port:    {declared}"
    )


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_each_backend_has_the_ports_attributes(backend: type) -> None:
    assert isinstance(backend.url_scheme, str)
    assert backend.clock_offset is not None


def test_a_backend_instance_is_each_port() -> None:
    store = MemoryTaskStore()
    for port in [*PORTS, ports.TaskStore]:
        assert isinstance(store, port), port.__name__
