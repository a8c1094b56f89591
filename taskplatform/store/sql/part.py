"""What every mixin of ``SqlTaskStore`` needs of the store it is part of."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

from sqlalchemy.ext.asyncio import AsyncEngine


class SqlPart(ABC):
    """The store's engines, its dialect and its translation of driver errors."""

    @property
    @abstractmethod
    def engine(self) -> AsyncEngine:
        """The engine, for transactions."""

    @property
    @abstractmethod
    def autocommit(self) -> AsyncEngine:
        """The engine in autocommit, for single statements."""

    @property
    @abstractmethod
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""

    @abstractmethod
    def _errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Translates driver errors to StoreError."""
