"""``emfence score``: the engine's alarms against the simulator's ground truth.

    emfence score --truth truth.jsonl --alarms alarms.jsonl [--json] [--late-ms 1000]
    emfence score --truth truth.jsonl --alarms sqlite:///demo-run/alarms.db

Matching (docs/simulator.md): a *raised* alarm matches a truth event when the type is the
event's expected alarm, the device is the event's device, the zone is the event's zone
(when the event names one), and the alarm's ``at`` lies in the event's window
``[start - slack_ms, end + slack_ms]``. Each truth event takes at most one alarm and each
alarm at most one event (earliest first). Then:

- **missed**: truth events expecting an alarm that no alarm matched;
- **false**: raised alarms with ``at`` inside the run that match no truth event (this
  includes a second alarm in one episode, i.e. flapping, and anything raised for the
  negative events: spoofed fixes, duplicates, malformed payloads, clock skew);
- **late**: matched alarms that reached the observer more than ``--late-ms`` after ``at``;
- **latency** ``rx_ms - at`` (p50/p95/p99, ms): from the deciding fix's timestamp (the
  wall clock when the simulator published it) to the alarm arriving on the alarm topic
  (alarms.jsonl written by ``emfence simulate --alarms-out``), or to the alarm being
  recorded in the store (``--alarms`` a store URL: the store's ``created_at``);
- **not_cleared**: matched alarms with no ``cleared`` event by the end of the record.

Truth events that end after the run ended (an interrupted run) are not scored.

Issue #14: the subject-level types (``separation``, ``contact``) match by subject instead
of device; ``proximity`` and ``contact`` must name the truth's ``person_id`` /
``peer_subject_id`` when both name one. One alarm per subject (``rules.alarm_per =
"subject"``, docs/rules.md): an event that no alarm of its own device matched is matched
by an alarm of its type and zone that lists its device in ``devices`` (the raised event
lists the first device, the cleared one every device of the episode) and was open at some
time in its window (each such alarm once per device). An event's ``detail.allow`` names
types that may also be raised for it inside its window without being false. Warnings
(``contract.alarms.WARNING_TYPES``: ``approach``) are scored on their own
(``warnings``): one matching nothing is a false warning, not a false alarm.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contract.alarms import WARNING_TYPES
from contract.errors import EmfenceError

DEFAULT_SLACK_MS = 2000
DEFAULT_LATE_MS = 1000
# Alarms raised on the subject (matched by subject_id), and the truth detail key naming
# the other party that the alarm must name too, when it names one.
SUBJECT_TYPES = ("separation", "contact")
OTHER_PARTY = {"proximity": "person_id", "contact": "peer_subject_id"}


class ScoreError(EmfenceError, ValueError):
    """Unreadable truth or alarms; names the file and line."""


@dataclass
class Truth:
    start: int
    end: int
    events: list[dict]
    meta: dict = field(default_factory=dict)


def _json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file; a file
    that cannot be read or a line that is not JSON raises ScoreError naming the place."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read: {exc.strerror}") from None
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield no, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ScoreError(f"{path}:{no}: not JSON: {exc}") from None


def read_truth(path: str | Path) -> Truth:
    """Parse a ground-truth file (first line ``what: run``, optional last ``run_end``)."""
    meta: dict | None = None
    end_line: dict | None = None
    events = []
    for no, rec in _json_lines(path):
        what = rec.get("what") if isinstance(rec, dict) else None
        if what == "run":
            meta = rec
        elif what == "run_end":
            end_line = rec
        elif isinstance(what, str):
            for key in ("device_id", "start", "end"):
                if key not in rec:
                    raise ScoreError(f"{path}:{no}: truth event without {key!r}")
            events.append(rec)
        else:
            raise ScoreError(f"{path}:{no}: a truth line needs a \"what\"")
    if meta is None:
        raise ScoreError(f"{path}: no run line (\"what\": \"run\") with the run's start and end")
    end = int(end_line["end"]) if end_line else int(meta["end"])
    return Truth(int(meta["start"]), end, events,
                 {**meta, **({"run_end": end_line} if end_line else {})})


def read_alarms(source: str) -> list[dict]:
    """Alarm events from a JSON-lines file (``rx_ms`` optional) or a store URL."""
    if "://" in source:
        from alarms.store import open_store

        store = open_store(source)
        out: list[dict] = []
        try:
            seq = 0
            while True:
                rows = store.events_since(seq, limit=5000)
                if not rows:
                    break
                for r in rows:
                    ev = dict(r["data"])
                    ev.setdefault("rx_ms", r["created_at"])
                    out.append(ev)
                seq = rows[-1]["seq"]
        finally:
            store.close_store()
        return out
    out = []
    for _, ev in _json_lines(source):
        if isinstance(ev, dict) and "event" in ev:
            out.append(ev)
    return out


def _pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": len(values), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(float(a.max()), 1)}


def score(truth: Truth, alarms: list[dict], *, slack_ms: int = DEFAULT_SLACK_MS,
          late_ms: int = DEFAULT_LATE_MS) -> dict:
    """The score as a dict (see the module docstring for the definitions)."""
    cleared = {a.get("alarm_id"): a for a in alarms if a.get("event") == "cleared"}
    cleared_ids = set(cleared)
    unique = _unique_raised(alarms)
    in_run = [_with_episode(a, cleared.get(a.get("alarm_id"))) for a in unique
              if truth.start <= int(a.get("at", 0)) <= truth.end]
    in_run.sort(key=lambda a: (int(a["at"]), str(a.get("alarm_id"))))
    scored = [e for e in truth.events if int(e["end"]) <= truth.end + slack_ms]
    not_scored = len(truth.events) - len(scored)
    expecting = sorted((e for e in scored if e.get("expect")),
                       key=lambda e: (int(e["start"]), e["device_id"]))
    used: list[set] = [set() for _ in in_run]
    matched, missed = _match(expecting, in_run, used, slack_ms)
    missed = _match_listed(missed, matched, in_run, used, slack_ms)
    _excuse_cut_off(truth, in_run, used, slack_ms)
    _excuse_allowed(scored, in_run, used, slack_ms)
    false_all = [a for i, a in enumerate(in_run) if not used[i]]
    warn = [(e, a) for e, a in matched if e["expect"] in WARNING_TYPES]
    matched = [(e, a) for e, a in matched if e["expect"] not in WARNING_TYPES]
    missed_warn = [e for e in missed if e["expect"] in WARNING_TYPES]
    missed = [e for e in missed if e["expect"] not in WARNING_TYPES]
    false = [a for a in false_all if a.get("type") not in WARNING_TYPES]
    false_warn = [a for a in false_all if a.get("type") in WARNING_TYPES]
    latencies = [float(a["rx_ms"]) - float(a["at"]) for _, a in matched
                 if a.get("rx_ms") is not None]
    late = [a for _, a in matched
            if a.get("rx_ms") is not None and float(a["rx_ms"]) - float(a["at"]) > late_ms]
    not_cleared = _distinct(a for _, a in matched if a.get("alarm_id") not in cleared_ids)
    n_expected = sum(1 for e in expecting if e["expect"] not in WARNING_TYPES)
    return {
        "run": {"start": truth.start, "end": truth.end, "scenario": truth.meta.get("scenario")},
        "truth_events": len(truth.events), "not_scored": not_scored,
        "expected": n_expected, "matched": len(matched), "missed": len(missed),
        "false": len(false), "late": len(late), "not_cleared": len(not_cleared),
        "alarms_raised": len(unique), "alarms_in_run": len(in_run),
        "latency": _pct(latencies),
        "by_type": _by_type(expecting, in_run, matched + warn, missed + missed_warn, false_all),
        "missed_events": [_brief_truth(e) for e in missed],
        "false_alarms": [_brief(a) for a in false],
        "late_alarms": [_brief(a) for a in late],
        "not_cleared_alarms": [_brief(a) for a in not_cleared],
        "warnings": {
            "expected": len(expecting) - n_expected, "matched": len(warn),
            "missed": len(missed_warn), "false": len(false_warn),
            "not_cleared": len(_distinct(a for _, a in warn
                                         if a.get("alarm_id") not in cleared_ids)),
            "missed_events": [_brief_truth(e) for e in missed_warn],
            "false_warnings": [_brief(a) for a in false_warn],
        },
        "slack_ms": slack_ms, "late_ms": late_ms,
    }


def _brief(a: dict) -> dict:
    return {k: a.get(k) for k in ("type", "subject_id", "device_id", "zone_id", "at",
                                  "alarm_id", "rx_ms")}


def _brief_truth(e: dict) -> dict:
    return {k: e.get(k) for k in ("what", "subject_id", "device_id", "zone_id", "start", "end",
                                  "expect")}


def _distinct(alarms) -> list[dict]:
    """Each alarm once (one alarm per subject may match an event of each of its devices)."""
    return list({id(a): a for a in alarms}.values())


def _unique_raised(alarms: list[dict]) -> list[dict]:
    """The raised events, each once: an event seen twice (MQTT QoS 1 redelivery) is one."""
    seen: set = set()
    unique = []
    for a in alarms:
        if a.get("event") != "raised":
            continue
        key = a.get("alarm_id") or (a.get("type"), a.get("device_id"), a.get("zone_id"),
                                    a.get("at"))
        if key in seen:
            continue
        seen.add(key)
        unique.append(a)
    return unique


def _with_episode(a: dict, clear: dict | None) -> dict:
    """A copy of raised alarm ``a`` with ``_listed`` (every device its raised and cleared
    events list, its own included) and ``_until`` (its cleared ``at``, or None)."""
    listed = {a.get("device_id")}
    for ev in (a, clear or {}):
        for x in ev.get("devices") or ():
            listed.add(x.get("device_id") if isinstance(x, dict) else x)
    return {**a, "_listed": listed, "_until": None if clear is None else int(clear["at"])}


def _fits(e: dict, a: dict, type_: str, *, listed: bool = False) -> bool:
    """Whether alarm ``a`` is of ``type_``, for ``e``'s subject (subject-level types) or
    device (``listed``: any device the alarm lists), its zone and its other party."""
    if a.get("type") != type_:
        return False
    if type_ in SUBJECT_TYPES:
        if a.get("subject_id") != e.get("subject_id"):
            return False
    elif e["device_id"] not in (a.get("_listed", ()) if listed else (a.get("device_id"),)):
        return False
    key = OTHER_PARTY.get(type_)
    want = (e.get("detail") or {}).get(key) if key else None
    if want is not None and a.get(key) is not None and a.get(key) != want:
        return False
    return e.get("zone_id") is None or a.get("zone_id") == e["zone_id"]


def _match(expecting: list[dict], in_run: list[dict], used: list[set], slack_ms: int
           ) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """(truth event, alarm) pairs and the missed truth events: each event takes the
    earliest unused alarm of its own device (or subject) that fits it; ``used`` collects
    what each alarm was taken for."""
    matched, missed = [], []
    for e in expecting:
        lo, hi = int(e["start"]) - slack_ms, int(e["end"]) + slack_ms
        hit = None
        for i, a in enumerate(in_run):
            if not used[i] and _fits(e, a, e["expect"]) and lo <= int(a["at"]) <= hi:
                hit = i
                break
        if hit is None:
            missed.append(e)
        else:
            used[hit].add(e["device_id"])
            matched.append((e, in_run[hit]))
    return matched, missed


def _match_listed(missed: list[dict], matched: list[tuple[dict, dict]], in_run: list[dict],
                  used: list[set], slack_ms: int) -> list[dict]:
    """Match missed events to one-alarm-per-subject alarms listing their device and open
    at some time in their window (each alarm once per device); appends to ``matched``,
    returns the events still missed."""
    still = []
    for e in missed:
        lo, hi = int(e["start"]) - slack_ms, int(e["end"]) + slack_ms
        hit = None
        for i, a in enumerate(in_run):
            if (e["device_id"] not in used[i] and len(a["_listed"]) > 1
                    and _fits(e, a, e["expect"], listed=True) and int(a["at"]) <= hi
                    and (a["_until"] is None or a["_until"] >= lo)):
                hit = i
                break
        if hit is None:
            still.append(e)
        else:
            used[hit].add(e["device_id"])
            matched.append((e, in_run[hit]))
    return still


def _excuse_cut_off(truth: Truth, in_run: list[dict], used: list[set], slack_ms: int) -> None:
    """Mark as used the alarms that fit an event cut off by the stop.

    Such an event ends after the run's end, so it is not scored, but it may still have
    been alarmed correctly before the stop: such an alarm is not false."""
    cut_off = [e for e in truth.events
               if e.get("expect") and int(e["end"]) > truth.end + slack_ms]
    for i, a in enumerate(in_run):
        if used[i]:
            continue
        for e in cut_off:
            if (_fits(e, a, e["expect"], listed=True)
                    and int(e["start"]) - slack_ms <= int(a["at"])):
                used[i].add("cut_off")
                break


def _excuse_allowed(events: list[dict], in_run: list[dict], used: list[set],
                    slack_ms: int) -> None:
    """Mark as used the alarms an event allows (``detail.allow``) inside its window."""
    allowing = [e for e in events if (e.get("detail") or {}).get("allow")]
    for i, a in enumerate(in_run):
        if used[i]:
            continue
        for e in allowing:
            if (any(_fits(e, a, t, listed=True) for t in e["detail"]["allow"])
                    and int(e["start"]) - slack_ms <= int(a["at"]) <= int(e["end"]) + slack_ms):
                used[i].add("allowed")
                break


def _by_type(expecting, in_run, matched, missed, false) -> dict[str, dict]:
    """The counts and latency per alarm type."""
    by_type: dict[str, dict] = {}
    for t in sorted({e["expect"] for e in expecting} | {a.get("type") for a in in_run}):
        lat_t = [float(a["rx_ms"]) - float(a["at"]) for e, a in matched
                 if e["expect"] == t and a.get("rx_ms") is not None]
        by_type[t] = {"expected": sum(1 for e in expecting if e["expect"] == t),
                      "matched": sum(1 for e, _ in matched if e["expect"] == t),
                      "missed": sum(1 for e in missed if e["expect"] == t),
                      "false": sum(1 for a in false if a.get("type") == t),
                      "latency": _pct(lat_t)}
    return by_type


def format_text(result: dict) -> str:
    lat = result["latency"]
    lines = [
        (f"expected {result['expected']}  matched {result['matched']}  "
         f"missed {result['missed']}  false {result['false']}  late {result['late']}  "
         f"not cleared {result['not_cleared']}"),
        (f"fix->alarm latency (n={lat['n']}): p50 {lat['p50_ms']} ms  p95 {lat['p95_ms']} ms  "
         f"p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms"),
    ]
    for t, v in result["by_type"].items():
        lines.append(f"  {t:<12} expected {v['expected']:>4}  matched {v['matched']:>4}  "
                     f"missed {v['missed']:>4}  false {v['false']:>4}  "
                     f"p99 {v['latency']['p99_ms']} ms")
    for e in result["missed_events"][:20]:
        lines.append(f"  MISSED {e['expect']} for {e['device_id']} "
                     f"({e['what']}, zone {e['zone_id']}) in [{e['start']}, {e['end']}]")
    for a in result["false_alarms"][:20]:
        lines.append(f"  FALSE  {a['type']} for {a['device_id']} zone {a['zone_id']} "
                     f"at {a['at']}")
    w = result["warnings"]
    if w["expected"] or w["false"]:
        lines.append(f"warnings: expected {w['expected']}  matched {w['matched']}  "
                     f"missed {w['missed']}  false {w['false']}")
        for e in w["missed_events"][:20]:
            lines.append(f"  MISSED warning {e['expect']} for {e['device_id']} "
                         f"(zone {e['zone_id']}) in [{e['start']}, {e['end']}]")
        for a in w["false_warnings"][:20]:
            lines.append(f"  FALSE  warning {a['type']} for {a['device_id']} "
                         f"zone {a['zone_id']} at {a['at']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emfence score", description="Compare alarms against a "
                                "simulator's ground truth: missed, false and late alarms, "
                                "latency.")
    p.add_argument("--truth", required=True,
                   help="ground truth written by `emfence simulate --truth`")
    p.add_argument("--alarms", required=True,
                   help="alarms.jsonl (from --alarms-out) or a store URL "
                   "(sqlite:///path.db, postgresql://...)")
    p.add_argument("--slack-ms", type=int, default=DEFAULT_SLACK_MS,
                   help="widen every truth window by this much on both sides "
                        f"(default {DEFAULT_SLACK_MS})")
    p.add_argument("--late-ms", type=int, default=DEFAULT_LATE_MS,
                   help=f"a matched alarm slower than this is late (default {DEFAULT_LATE_MS})")
    p.add_argument("--json", action="store_true", help="print the score as one JSON object")
    p.add_argument("--strict", action="store_true", help="exit 1 if anything was missed or false")
    args = p.parse_args(argv)
    from alarms.store import StoreError

    try:
        result = score(read_truth(args.truth), read_alarms(args.alarms), slack_ms=args.slack_ms,
                       late_ms=args.late_ms)
    except (ScoreError, OSError, StoreError) as exc:
        # One line: a driver's message (PostgreSQL's "Is the server running...") has several.
        print(f"emfence score: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(orjson.dumps(result).decode() if args.json else format_text(result))
    w = result["warnings"]
    if args.strict and (result["missed"] or result["false"] or w["missed"] or w["false"]):
        return 1
    return 0
