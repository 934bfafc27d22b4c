"""Fixtures of the live-service tests: a fleet on disk, a private broker that knows its
devices, and engine processes (`python -m emfence run`) that are stopped afterwards."""

from __future__ import annotations

import os

import pytest
from ingest_fleet import EngineProcess, Fleet


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


@pytest.fixture
def broker(mosquitto_factory, fleet):
    return mosquitto_factory(passwords=fleet.passwords())


@pytest.fixture
def engines():
    made: list[EngineProcess] = []

    def start(*args, **kwargs):
        e = EngineProcess(*args, **kwargs)
        made.append(e)
        return e.start()

    yield start
    for e in made:
        e.close()


@pytest.fixture
def private_pg():
    """A PostgreSQL server of the test's own (``.url``, ``.stop(mode)``, ``.start()``), for
    outages the shared server must not suffer. No server binaries: a skip, or a failure
    under CI=true / EMFENCE_REQUIRE_PG=1."""
    from private_postgres import PostgresUnavailable, PrivatePostgres

    try:
        pg = PrivatePostgres()
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true" or os.environ.get("EMFENCE_REQUIRE_PG") == "1":
            pytest.fail(f"CI / EMFENCE_REQUIRE_PG=1 but {exc}")
        pytest.skip(str(exc))
    try:
        yield pg.start()
    finally:
        pg.close()
