"""An alarm's evidence pack (证据包): one ZIP that re-derives the alarm without the live
store. :func:`evidence_window` says which stored fixes decided it; :func:`build_pack`
lays out the files (docs/console-api.md, "Evidence pack"):

``fixes.jsonl``      the subject's stored fixes of the window, as ``emfence replay`` reads
                     them (``rx`` = when the engine received each one), in receive order
``zones.geojson``    the zones the subject's entry names, as the register held them
``subjects.json``    the subject's entry as the register held it when the alarm was raised
``config.toml``      the rules the console's configuration runs them with
``alarm.json``       the stored alarm and its event-log rows, payloads as stored
``actions.json``     who did what to it, and when (acknowledge, close, notes, escalations)
``manifest.json``    each file's SHA-256, who exported it and when, the replay command and
                     which output lines must match the stored events
``SHA256SUMS``       the same digests for ``sha256sum -c``
``README.txt``       what the pack is and how to check it, in Chinese and English
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import shlex
import zipfile
import zoneinfo
from datetime import UTC, datetime
from typing import Any

import orjson

from emfence.config import Config, PerLevel

FORMAT = "emfence-evidence/1"


def _version() -> str:
    """The installed emfence's version (the console may not import the application)."""
    try:
        return importlib.metadata.version("emfence")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
ENGINE_EVENTS = ("raised", "cleared")
# Relation alarms need another subject's or a protected person's fixes, which the pack
# does not carry (they are someone else's personal data).
NOT_REPLAYED = {"contact": "needs the other subject's fixes",
                "proximity": "needs the protected person's fixes",
                # The store keeps fixes, not statuses: these are decided by statuses.
                **{t: "decided by device statuses, which the store does not keep"
                   for t in ("tamper", "low_battery", "power_off", "no_fix")}}


def evidence_window(alarm: dict[str, Any], config: Config, level: str | None,
                    floor_ms: int) -> dict[str, int]:
    """The fixes that decide ``alarm``: ts in [``from_ms``, ``to_ms``].

    ``from_ms`` is ``raised_at`` less twice the longest silence rule of the subject's level
    (offline, no_fix; every level's when it is unknown), and at least ``floor_ms``: a
    confirm run, an episode's start and the last receive before a silence all lie within
    it for a device that reports at its level's interval. ``to_ms`` is the clearing ``at``
    (``raised_at`` while active). ``lookback_ms`` is the difference."""
    r = config.rules

    def longest(p: PerLevel) -> float:
        return p.for_level(level) if level else max(p.as_tuple())

    lookback_ms = max(int(2 * 1000 * max(longest(r.offline_after_s),
                                         longest(r.no_fix_after_s))), floor_ms)
    raised = int(alarm["raised_at"])
    cleared = alarm.get("cleared_at")
    return {"from_ms": raised - lookback_ms, "to_ms": raised if cleared is None else int(cleared),
            "lookback_ms": lookback_ms}


def subject_files(alarm: dict[str, Any], register: tuple[dict, dict]
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(zones FeatureCollection, subjects file, the subject's entry or None): the alarm's
    subject alone, with the zones its entry names. Its ``contacts`` are left out (the peer
    is not in the pack), and so are protected persons."""
    zones_fc, subjects = register
    entry = next((s for s in subjects["subjects"] if s["subject_id"] == alarm["subject_id"]),
                 None)
    if entry is None:
        return {"type": "FeatureCollection", "features": []}, {"subjects": []}, None
    entry = {k: v for k, v in entry.items() if k != "contacts"}
    named = {*entry.get("inclusion", ()), *entry.get("exclusion", ())}
    for leave in entry.get("leaves", ()):
        named.update(leave.get("zones", ()))
    named.update(c["zone"] for c in entry.get("curfews", ()))

    def zone_id(f: dict) -> Any:
        return (f.get("properties") or {}).get("zone_id") or f.get("id")

    features = [f for f in zones_fc["features"] if zone_id(f) in named]
    return {"type": "FeatureCollection", "features": features}, {"subjects": [entry]}, entry


def fixes_jsonl(fixes: list[dict[str, Any]], devices: set[str]) -> bytes:
    """The stored fixes of ``devices`` as replay lines, in the order the engine received
    them (``received_at``, then ts): ``device_id``, ``ts``, ``lat``, ``lon``, ``acc``,
    ``src``, ``rx``. Coordinates are WGS-84, as stored (after any GCJ-02 conversion)."""
    rows = sorted((f for f in fixes if f["device_id"] in devices),
                  key=lambda f: (int(f["received_at"]), int(f["ts"]), f["device_id"]))
    out = []
    for f in rows:
        line: dict[str, Any] = {"device_id": f["device_id"], "ts": int(f["ts"]),
                                "lat": float(f["lat"]), "lon": float(f["lon"])}
        if f["acc"] is not None:
            line["acc"] = float(f["acc"])
        if f["src"]:
            line["src"] = f["src"]
        line["rx"] = int(f["received_at"])
        out.append(orjson.dumps(line) + b"\n")
    return b"".join(out)


def config_toml(config: Config) -> bytes:
    """The keys a replay reads (``[rules]``, ``ingest.max_future_ms``,
    ``register.timezone``) as TOML, so the pack replays with the rules of this console."""
    lines, tables = ["[rules]"], []
    for key, value in vars(config.rules).items():
        if isinstance(value, PerLevel):
            tables += ["", f"[rules.{key}]", *(f"{lv} = {getattr(value, lv)!r}"
                                               for lv in ("strict", "ordinary", "lenient"))]
        elif isinstance(value, str):
            lines.append(f"{key} = {orjson.dumps(value).decode()}")
        else:
            lines.append(f"{key} = {value!r}")
    lines += tables
    lines += ["", "[ingest]", f"max_future_ms = {config.ingest.max_future_ms}",
              "", "[register]", f"timezone = {orjson.dumps(config.register.timezone).decode()}"]
    return ("\n".join(lines) + "\n").encode()


def local_time(ms: int, tz: str) -> str:
    """``2025-11-22 16:26:41 +08:00 (Asia/Shanghai)``."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zoneinfo.ZoneInfo(tz))
    return f"{t.strftime('%Y-%m-%d %H:%M:%S')} {t.strftime('%z')[:3]}:{t.strftime('%z')[3:]} ({tz})"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def alarm_files(alarm: dict[str, Any], events: list[dict[str, Any]],
                actions: list[dict[str, Any]]) -> dict[str, bytes]:
    """``alarm.json`` (the stored alarm and its event-log rows; each ``payload`` is the
    stored bytes as a string, so that a replay line can be compared with it byte for
    byte) and ``actions.json`` (the operators' and the system's actions, and the
    lifecycle events such as ``escalated``)."""
    rows = [{"seq": e["seq"], "event": e["event"], "created_at": e["created_at"],
             "delivered_at": e["delivered_at"], "payload": e["payload"].decode()}
            for e in events]
    lifecycle = [{"seq": e["seq"], "event": e["event"], "created_at": e["created_at"],
                  "data": orjson.loads(e["payload"])}
                 for e in events if e["event"] not in ENGINE_EVENTS]
    keys = ("state", "workflow", "acknowledged_by", "acknowledged_at", "closed_by",
            "closed_at", "disposition", "note", "escalated_at")
    return {
        "alarm.json": _dumps({"alarm": alarm, "events": rows}),
        "actions.json": _dumps({"alarm_id": alarm["alarm_id"],
                                "outcome": {k: alarm.get(k) for k in keys},
                                "actions": actions, "lifecycle_events": lifecycle}),
    }


def replay_argv(until_ms: int) -> list[str]:
    return ["emfence", "replay", "--zones", "zones.geojson", "--subjects", "subjects.json",
            "--config", "config.toml", "--fixes", "fixes.jsonl", "--until", str(until_ms)]


def until_of(window: dict[str, int], fixes: bytes) -> int:
    """The replay's ``--until``: the window's end, or the last receive time in the pack
    when later (a fix received after its ts must still be replayed)."""
    rx = [orjson.loads(line)["rx"] for line in fixes.splitlines()]
    return max([window["to_ms"], *rx])


README = """emfence 告警证据包 / emfence alarm evidence pack
==================================================

告警 / alarm: {alarm_id} ({type})，对象 / subject {subject_id}，辖区 / region {region}
导出人 / exported by: {who}，导出时间 / exported at: {at_local}

【中文】
本证据包用于告警的登记备案与复核。fixes.jsonl 是该对象设备在告警前后存储的定位记录
（rx 为系统接收时间），zones.geojson 与 subjects.json 是告警发生时登记簿中的围栏与对象
登记，config.toml 是判定规则的参数；alarm.json 是系统存储的告警及其事件原文，
actions.json 是值班人员的处置记录（接警、结案、备注、升级）及人员与时间。
核验方法：
  1. 在本目录执行 sha256sum -c SHA256SUMS，每个文件都应显示“OK”（成功）；
  2. 执行 manifest.json 中的 replay_command（需要安装 emfence {version}）；
     输出中告警编号为 {alarm_id} 的各行，应与 alarm.json 中 expected_events 所列事件的
     payload 逐字节一致。

[English]
This pack files and re-checks one alarm. fixes.jsonl holds the subject's devices' stored
fixes around the alarm (rx: when the system received each), zones.geojson and
subjects.json the zones and the subject's entry as the register held them when the alarm
was raised, config.toml the rules' settings; alarm.json is the alarm and its events as
stored, actions.json what the operators did (acknowledge, close, notes, escalations),
by whom and when.
To verify:
  1. in this folder run  sha256sum -c SHA256SUMS : every file must say OK;
  2. run the replay_command of manifest.json (emfence {version} installed); the output
     lines with alarm_id {alarm_id} must equal, byte for byte, the payloads of the events
     listed in manifest.json's expected_events, as alarm.json holds them.

replay_command: {command}
"""


def build_pack(alarm: dict[str, Any], reads: dict[str, Any], *, config: Config,
               window: dict[str, int], who: str, now_ms: int, tz: str) -> bytes:
    """The ZIP (bytes) of the evidence pack; ``reads`` as
    :meth:`console.gateway.StoreGateway.evidence` answers."""
    zones_fc, subjects, entry = subject_files(alarm, reads["register"])
    devices = {d["device_id"] for d in entry["devices"]} if entry else set()
    fixes = fixes_jsonl(reads["fixes"], devices)
    files = {"fixes.jsonl": fixes, "zones.geojson": _dumps(zones_fc),
             "subjects.json": _dumps(subjects), "config.toml": config_toml(config),
             **alarm_files(alarm, reads["events"], reads["actions"])}
    until_ms = until_of(window, fixes)
    argv = replay_argv(until_ms)
    command = shlex.join(argv)
    expected = [e["event"] for e in reads["events"] if e["event"] in ENGINE_EVENTS]
    why_not = NOT_REPLAYED.get(alarm["type"]) or (
        None if entry else "the subject is not in the register of that moment")
    manifest = {
        "format": FORMAT, "alarm_id": alarm["alarm_id"], "type": alarm["type"],
        "subject_id": alarm["subject_id"], "region": alarm["region"],
        "exported_by": who, "exported_at_ms": now_ms,
        "exported_at_local": local_time(now_ms, tz), "timezone": tz,
        "emfence_version": __version__,
        "window": {**window, "until_ms": until_ms,
                   "fixes": fixes.count(b"\n"), "devices": sorted(devices)},
        "register_as_of_ms": int(alarm["raised_at"]),
        "register_changes_in_window": reads["changes"],
        "replay_command": command, "replay_argv": argv,
        "expected_events": {"file": "alarm.json", "alarm_id": alarm["alarm_id"],
                            "events": expected,
                            "match": "the replay's output lines with this alarm_id, in "
                                     "order, equal these events' payloads byte for byte"},
        "replayable": why_not is None, "not_replayable_because": why_not,
        "files": {name: hashlib.sha256(body).hexdigest() for name, body in files.items()},
    }
    files["manifest.json"] = _dumps(manifest)
    files["README.txt"] = README.format(
        alarm_id=alarm["alarm_id"], type=alarm["type"], subject_id=alarm["subject_id"],
        region=alarm["region"], who=who, at_local=manifest["exported_at_local"],
        version=__version__, command=command).encode()
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n"
                                  for name, body in files.items()).encode()
    return zip_files(files, now_ms)


def zip_files(files: dict[str, bytes], now_ms: int) -> bytes:
    """The files in one ZIP, compressed, each stamped with ``now_ms`` (UTC)."""
    stamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).timetuple()[:6]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, body)
    return buf.getvalue()
