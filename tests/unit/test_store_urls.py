"""``create_store`` beyond the plain URLs (tests/unit/test_settings_and_registry.py): the scheme in
any case, ``mongodb+srv`` with the retention setting handed on, and a URL without a scheme refused."""

from __future__ import annotations

import pytest

from taskplatform.errors import ConfigError
from taskplatform.store import create_store
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.sql import SqlTaskStore


def test_the_scheme_is_read_in_any_case() -> None:
    assert isinstance(create_store("SQLite+AIOSQLite:///tmp/x.db", auto_migrate=False), SqlTaskStore)


@pytest.mark.parametrize("url", ["mongodb://h/db", "mongodb+srv://cluster.example/db"])
def test_mongodb_urls_hand_on_the_retention_setting(url: str) -> None:
    store = create_store(url, retention_seconds=3600)
    assert isinstance(store, MongoTaskStore) and store.retention_seconds == 3600


@pytest.mark.parametrize("url", ["tasks.db", "", "postgresql://u@h/db"])
def test_a_url_without_a_supported_scheme_is_refused_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported store URL scheme") as refused:
        create_store(url)
    assert "sqlite+aiosqlite" in str(refused.value) and "memory://" in str(refused.value)
