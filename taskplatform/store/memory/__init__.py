"""In-memory task store (``memory://``): the whole store contract in this process, for tests."""

from taskplatform.store.memory.part import forget_dataset
from taskplatform.store.memory.store import MemoryTaskStore

__all__ = ["MemoryTaskStore", "forget_dataset"]
