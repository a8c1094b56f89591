"""What every mixin of ``MongoTaskStore`` needs of the store it is part of."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any


class MongoPart(ABC):
    """The store's database and collections, and its translation of driver errors."""

    @property
    @abstractmethod
    def database(self) -> Any:
        """The store's database."""

    @property
    @abstractmethod
    def collection(self) -> Any:
        """The tasks collection."""

    @abstractmethod
    def _collection_named(self, name: str) -> Any:
        """The collection ``name`` of the store's database."""

    @abstractmethod
    def _errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Translates driver errors to StoreError."""
