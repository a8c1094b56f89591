"""Unclosed resources found deterministically: collect garbage at a known point and fail there."""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import pytest


def collect_garbage_or_fail(what: str) -> None:
    """Collect garbage now and fail if a finalizer warned: a connection, transport or file left
    unclosed. Left to the collector, its warning (an error under ``filterwarnings = error``)
    surfaces at an arbitrary later point: in an unrelated test, or after the last one as an
    INTERNALERROR."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    if not caught:
        return
    found = []
    for w in caught:
        origin = tracemalloc.get_object_traceback(w.source) if w.source is not None else None
        where = "\n" + "\n".join(origin.format()) if origin is not None else ""
        found.append(f"{w.category.__name__}: {w.message}{where}")
    hint = "" if tracemalloc.is_tracing() else " (PYTHONTRACEMALLOC=20 shows where each was allocated)"
    pytest.fail(f"{what} left unclosed resources behind{hint}:\n" + "\n".join(found), pytrace=False)
