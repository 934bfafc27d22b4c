"""Checks the relation rules' tests share (proximity, contact): that the kernel-against-
reference comparison notices a change of each rule number, and that the configured
numbers reach the kernel. ``generate(seed, n)`` gives (subjects, records, until)."""

from __future__ import annotations

from engine_helpers import brief
from engine_reference import Reference
from test_engine_separation import replay_events
from test_engine_vs_reference import REF_ZONES

from emfence.config import config_from_dict
from engine import Engine


def comparison_is_sensitive(generate, n: int, variants: list[dict]) -> None:
    """For each variant of the rule numbers, some generated scenario (seeds 0-2) where the
    engine at the defaults differs from the reference with that variant."""
    runs = []
    for seed in range(3):
        subj, records, until = generate(seed, n)
        runs.append((subj, records, until, brief(replay_events(Engine, subj, records,
                                                               until)[1])))
    for variant in variants:
        assert any(got != Reference(REF_ZONES, subj, relations=variant).replay(records, until)
                   for subj, records, until, got in runs), variant


def numbers_reach_the_kernel(generate, seed: int, n: int, rules: dict, type_name: str) -> None:
    """The engine configured with ``rules`` gives the reference's ``type_name`` events."""
    subj, records, until = generate(seed, n)
    _, got = replay_events(Engine, subj, records, until, config_from_dict({"rules": rules}))
    want = Reference(REF_ZONES, subj, relations=rules).replay(records, until)
    assert [e for e in brief(got) if e[1] == type_name] == [
        e for e in want if e[1] == type_name]
    assert any(e[1] == type_name for e in want)
