"""Fixtures of the live-service tests: a fleet on disk, a private broker that knows its
devices, and engine processes (`python -m emfence run`) that are stopped afterwards."""

from __future__ import annotations

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
