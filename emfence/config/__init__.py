"""The one typed table of configuration keys, with their defaults and units.

A TOML file overrides any subset::

    [rules]
    buffer_m = 80

    [rules.offline_after_s]
    strict = 300

Every key is documented in ``docs/configuration.md`` (a test holds the two together).
Units are in the names: ``_m`` metres, ``_s`` seconds, ``_ms`` milliseconds, ``_pct`` percent.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emfence.config.errors import ConfigError, read_secret
from emfence.config.notify import (
    EmailConfig,
    NotifyConfig,
    SmsConfig,
    WebhookConfig,
    check_notify,
    template_fields,
)
from emfence.config.tiles import TilesConfig, check_tiles

# The [notify] tables live in emfence.config.notify; they are part of this table.
__all__ = ["Config", "ConfigError", "EmailConfig", "HaConfig", "NotifyConfig", "SmsConfig",
           "TilesConfig", "WebhookConfig", "config_from_dict", "load_config", "read_secret",
           "template_fields"]

LEVELS = ("strict", "ordinary", "lenient")


@dataclass(frozen=True)
class PerLevel:
    """One number per management level (strict / ordinary / lenient)."""

    strict: float
    ordinary: float
    lenient: float

    def for_level(self, level: str) -> float:
        return getattr(self, level)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.strict, self.ordinary, self.lenient)


@dataclass(frozen=True)
class RulesConfig:
    # A fix is *out* when its distance to the allowed region exceeds max(buffer_m, acc).
    buffer_m: float = 50.0
    # Consecutive *out* fixes that raise `outbound` (uncertain fixes neither count nor break
    # the run).
    outbound_confirm_fixes: int = 2
    # Silence (by receive time) after which a device is `offline`, per level.
    offline_after_s: PerLevel = field(default_factory=lambda: PerLevel(600, 1800, 3600))
    # `low_battery` raises at or below this percentage...
    battery_low_pct: float = 15.0
    # ...and clears at or above this one (hysteresis).
    battery_clear_pct: float = 20.0
    # `separation` (人机分离): a subject's bracelet fix and phone fix at most this far apart
    # in time, s...
    separation_window_s: float = 300.0
    # ...farther apart than this plus both accuracies, m...
    separation_m: float = 500.0
    # ...in this many consecutive such pairs raise `separation`.
    separation_confirm: int = 2
    # A device that sends statuses but no fix for this long (receive time) is `no_fix`, per
    # level.
    no_fix_after_s: PerLevel = field(default_factory=lambda: PerLevel(900, 1800, 3600))
    # `approach` (a warning): a fix outside an exclusion zone but within this distance of
    # it, beyond its accuracy, m; 0 turns it off.
    approach_m: float = 200.0
    # The same warning inside the inclusion zone within this distance of its border, m;
    # 0 turns it off.
    border_warn_m: float = 0.0
    # `proximity`: a subject's fix within this distance of a protected person's latest fix,
    # m...
    proximity_m: float = 1000.0
    # ...that fix at most this much older (event time), s.
    proximity_fresh_s: float = 300.0
    # `contact`: two subjects listed as prohibited contacts within this distance, m...
    contact_m: float = 200.0
    # ...for at least this long, s.
    contact_min_s: float = 600.0
    # One alarm per subject for the same type and zone, listing its devices ("subject"),
    # or one per device ("device").
    alarm_per: str = "subject"


@dataclass(frozen=True)
class IngestConfig:
    # Largest accepted MQTT payload, bytes.
    max_payload_bytes: int = 65536
    # Largest store-and-forward array, fixes.
    max_fixes_per_payload: int = 1000
    # A fix may be at most this far in the future of the receive time, ms.
    max_future_ms: int = 300_000
    # Flush a micro-batch at this many messages...
    batch_max_messages: int = 2000
    # ...or this long after its first message, ms.
    batch_max_ms: int = 20
    # Offline sweep period, ms (receive time).
    sweep_interval_ms: int = 1000
    # After a start, offline alarms wait until the backlog drains; after a broker outage
    # also for this grace, s (devices reconnect meanwhile).
    restart_grace_s: float = 60.0
    # Drain markers still missing this long after the grace no longer hold offline
    # alarms, s (a broker that drops them would hold them for ever).
    drain_wait_s: float = 120.0
    # The broker's ack wait, s: it re-sends a message a connection did not acknowledge only
    # this long after sending it (NATS ack_wait, EMQX mqtt.retry_interval); offline alarms
    # wait this long after the backlog drained too. 0: it re-sends at once (mosquitto).
    broker_ack_wait_s: float = 0.0
    # Health message period, s.
    health_interval_s: float = 10.0
    # Reconnect backoff: first delay and cap, s (full jitter).
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # Checkpoint period, s (also on SIGTERM/SIGINT).
    checkpoint_interval_s: float = 30.0
    # Messages processed but not yet acknowledged to the broker before a checkpoint is
    # forced. Up to three windows can be unacknowledged at once (one being checkpointed,
    # one waiting, one filling), so the broker's max_inflight_messages should be at least
    # three times this (the shipped mosquitto config allows 60 000), or intake stalls
    # until the periodic checkpoint.
    ack_window_messages: int = 20_000
    # Incremental checkpoints between two full ones: each window's checkpoint holds only
    # the state that changed since the previous one; a full one is written after this
    # many, or once they add up to a full one's size. 0: every checkpoint is full.
    checkpoint_deltas_max: int = 100
    # Digests of processed messages are kept this long after their acknowledgement, s,
    # so that a message the broker sends again although it was acknowledged (the PUBACK
    # died with a broker node: NATS re-sends after its ack_wait) is recognised, not
    # processed twice. Longer than the broker's ack wait plus a failover; 16 bytes of
    # memory per message received in that time.
    redelivery_horizon_s: float = 120.0
    # Dead letters waiting for the broker; beyond this they are dropped and counted (a
    # flood of garbage must not grow memory; the rejections are still counted).
    deadletter_queue_messages: int = 10_000
    # What a worker with --regions subscribes to: "regions", a fix and a status filter
    # (and a reply filter) per region; "all", the filters of every region, the messages
    # of other regions acknowledged and counted (other_region), never processed: for a
    # broker where each filter is expensive (NATS: each one a JetStream consumer).
    subscribe: str = "regions"
    # The engine exits (code 3) after this long without receiving anything, not even its
    # own ping (sent every health_interval_s), s; 0 turns the watchdog off.
    watchdog_s: float = 60.0


@dataclass(frozen=True)
class AlarmsConfig:
    # An alarm not acknowledged within this time emits `escalated` once, s.
    escalate_after_s: float = 300.0
    # Outbox resend period for events not yet acknowledged by the broker, s.
    outbox_retry_s: float = 5.0
    # Longest period between escalation checks, s (shorter for short escalation windows).
    escalation_check_s: float = 5.0


@dataclass(frozen=True)
class TracksConfig:
    # Fix history kept for the console's track view, days (location data is personal data).
    retention_days: float = 30.0
    # Accepted fixes waiting to be written to the track store; beyond this the oldest are
    # dropped and counted (the track view is a convenience: the rules already ran).
    queue_rows: int = 200_000


@dataclass(frozen=True)
class ConsoleConfig:
    # A session ends after this long without a request, s...
    session_idle_s: float = 1800.0
    # ...and at the latest this long after login, s (an operator's shift plus slack).
    session_max_s: float = 12 * 3600.0
    # Failed logins allowed per account name within the window below...
    login_fail_per_user: int = 5
    # ...and per client IP address (an office behind one NAT shares an address).
    login_fail_per_ip: int = 20
    # The sliding window both login limits count over, s.
    login_window_s: float = 900.0
    # How often the console asks the store for new events for all its live feeds, s.
    feed_poll_s: float = 0.5
    # A comment line is sent on an idle feed this often, s, so proxies keep it open.
    feed_keepalive_s: float = 15.0
    # Track around an alarm: default window before and after `at`, ms...
    track_window_ms: int = 3_600_000
    # ...and the widest window a client may ask for on either side, ms.
    track_window_max_ms: int = 24 * 3_600_000
    # Zone outlines are simplified to this tolerance for drawing, metres.
    zone_simplify_m: float = 20.0
    # Worker threads for store calls (each holds one database connection), so a slow
    # statistics query does not hold up the live feeds.
    store_threads: int = 4
    # Largest page of alarms one list request returns.
    list_limit_max: int = 1000
    # The command centre's time zone (IANA name): the page shows every time in it, with
    # its UTC offset, whatever the browser's zone; statistics count days in it.
    timezone: str = "Asia/Shanghai"
    # The console's address as people open it (e.g. "https://emfence.example.gov.cn"):
    # notification messages link to the alarm there; empty: no link.
    public_url: str = ""
    # The base map under the console's maps (emfence.config.tiles); a string is its url.
    # Empty: no base map, boundaries on a plain background, no tile requests.
    tiles: TilesConfig = field(default_factory=TilesConfig)


@dataclass(frozen=True)
class RegisterConfig:
    # The local time zone of curfew windows ("22:00-06:00"), an IANA name.
    timezone: str = "Asia/Shanghai"
    # Longest leave a supervisor may approve, days.
    leave_max_days: int = 30


@dataclass(frozen=True)
class HaConfig:
    # A worker group's lease (emfence run workers sharing one --name and one PostgreSQL
    # store) lasts this long unless renewed, s; the holder renews it every third of it, and
    # a standby takes it over once it has expired.
    lease_ttl_s: float = 10.0


@dataclass(frozen=True)
class Config:
    rules: RulesConfig = field(default_factory=RulesConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    tracks: TracksConfig = field(default_factory=TracksConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    ha: HaConfig = field(default_factory=HaConfig)


def _build(default: Any, data: dict[str, Any], prefix: str, source: str | None) -> Any:
    """A copy of the dataclass instance ``default`` with the keys of ``data`` replaced."""
    cls = type(default)
    if not isinstance(data, dict):
        raise ConfigError("must be a table", key=prefix or None, source=source)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key; known keys: {', '.join(sorted(known))}", key=key,
                          source=source)
    kwargs = {}
    for name in known:
        key = f"{prefix}.{name}" if prefix else name
        current = getattr(default, name)
        if name not in data:
            kwargs[name] = current
            continue
        value = data[name]
        if dataclasses.is_dataclass(current):
            if isinstance(current, PerLevel) and not isinstance(value, dict):
                value = {lvl: value for lvl in LEVELS}  # one number for every level
            if isinstance(current, TilesConfig) and isinstance(value, str):
                value = {"url": value}  # console.tiles = "https://..."
            kwargs[name] = _build(current, value, key, source)
            continue
        kwargs[name] = _coerce(value, type(current), key, source)
    return cls(**kwargs)


def _coerce(value: Any, want: type, key: str, source: str | None) -> Any:
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", key=key, source=source)
        return value
    if want is dict:  # a table of strings (e.g. notify.sms.headers)
        if not isinstance(value, dict):
            raise ConfigError("must be a table", key=key, source=source)
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigError(f"must be a string, got {v!r}", key=f"{key}.{k}",
                                  source=source)
        return dict(value)
    if want is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", key=key, source=source)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number, got {value!r}", key=key, source=source)
    if not math.isfinite(value):
        raise ConfigError(f"must be finite, got {value!r}", key=key, source=source)
    if value < 0:
        raise ConfigError(f"must not be negative, got {value!r}", key=key, source=source)
    if want is int:
        if int(value) != value:
            raise ConfigError(f"must be a whole number, got {value!r}", key=key, source=source)
        return int(value)
    return float(value)


def _check(config: Config, source: str | None) -> Config:
    _check_rules(config.rules, source)
    _check_ingest(config.ingest, source)
    if config.ha.lease_ttl_s < 1:
        raise ConfigError("must be at least 1 (seconds)", key="ha.lease_ttl_s", source=source)
    if config.tracks.queue_rows < 1:
        raise ConfigError("must be at least 1", key="tracks.queue_rows", source=source)
    if config.alarms.escalation_check_s <= 0:
        raise ConfigError("must be positive", key="alarms.escalation_check_s", source=source)
    c = config.console
    for name in ("login_fail_per_user", "login_fail_per_ip", "store_threads", "list_limit_max"):
        if getattr(c, name) < 1:
            raise ConfigError("must be at least 1", key=f"console.{name}", source=source)
    if c.feed_poll_s <= 0:
        raise ConfigError("must be positive", key="console.feed_poll_s", source=source)
    if c.track_window_max_ms < c.track_window_ms:
        raise ConfigError("must be >= console.track_window_ms", key="console.track_window_max_ms",
                          source=source)
    problem = time_zone_problem(c.timezone)
    if problem:
        raise ConfigError(problem, key="console.timezone", source=source)
    check_tiles(c.tiles, source)
    check_notify(config.notify, config.console.public_url, source)
    return _check_register(config, source)


def _check_ingest(i: IngestConfig, source: str | None) -> None:
    if i.reconnect_max_s < i.reconnect_min_s:
        raise ConfigError("must be >= ingest.reconnect_min_s", key="ingest.reconnect_max_s",
                          source=source)
    if i.watchdog_s and i.watchdog_s < max(2 * i.health_interval_s, i.reconnect_max_s + 1):
        # The ping comes every health_interval_s and a reconnect attempt at least every
        # reconnect_max_s: a shorter watchdog would stop a healthy engine.
        raise ConfigError(f"must be 0 (off) or at least twice ingest.health_interval_s and "
                          f"more than ingest.reconnect_max_s, got {i.watchdog_s:g}",
                          key="ingest.watchdog_s", source=source)
    if i.subscribe not in ("regions", "all"):
        raise ConfigError(f'must be "regions" or "all", got {i.subscribe!r}',
                          key="ingest.subscribe", source=source)
    for name in ("drain_wait_s", "broker_ack_wait_s"):
        if getattr(i, name) < 0:
            raise ConfigError("must be 0 or more (seconds)", key=f"ingest.{name}",
                              source=source)
    if i.checkpoint_deltas_max < 0:
        raise ConfigError("must be 0 (every checkpoint full) or more",
                          key="ingest.checkpoint_deltas_max", source=source)
    if i.redelivery_horizon_s <= 0:
        raise ConfigError("must be positive (seconds)", key="ingest.redelivery_horizon_s",
                          source=source)
    for name in ("max_payload_bytes", "max_fixes_per_payload", "batch_max_messages",
                 "sweep_interval_ms", "ack_window_messages", "deadletter_queue_messages"):
        if getattr(i, name) < 1:
            raise ConfigError("must be at least 1", key=f"ingest.{name}", source=source)


def _check_rules(r: RulesConfig, source: str | None) -> None:
    if not 1 <= r.outbound_confirm_fixes <= 100:
        raise ConfigError("must be between 1 and 100", key="rules.outbound_confirm_fixes",
                          source=source)
    if r.battery_clear_pct < r.battery_low_pct:
        raise ConfigError("must be >= rules.battery_low_pct", key="rules.battery_clear_pct",
                          source=source)
    if r.separation_confirm < 1:
        raise ConfigError("must be at least 1", key="rules.separation_confirm", source=source)
    for name in ("separation_window_s", "separation_m", "proximity_m", "contact_m"):
        if getattr(r, name) <= 0:
            raise ConfigError("must be positive", key=f"rules.{name}", source=source)
    for level in LEVELS:
        if r.no_fix_after_s.for_level(level) <= 0:
            raise ConfigError("must be positive", key=f"rules.no_fix_after_s.{level}",
                              source=source)
    if r.alarm_per not in ("subject", "device"):
        raise ConfigError(f'must be "subject" or "device", got {r.alarm_per!r}',
                          key="rules.alarm_per", source=source)


def _check_register(config: Config, source: str | None) -> Config:
    problem = time_zone_problem(config.register.timezone)
    if problem:
        raise ConfigError(problem, key="register.timezone", source=source)
    if not 1 <= config.register.leave_max_days <= 366:
        raise ConfigError("must be between 1 and 366", key="register.leave_max_days",
                          source=source)
    return config


# Names the time-zone database holds that are no zone a browser knows.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def time_zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time-zone name this machine knows (None when it is)."""
    if name not in _NOT_ZONES:
        try:
            zoneinfo.ZoneInfo(name)
            return None
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            pass  # named below, with a suggestion
    known = zoneinfo.available_timezones() - _NOT_ZONES
    if not known:
        return (f"unknown time zone {name!r}: this machine has no time-zone database "
                "(install the Debian package tzdata)")
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown time zone {name!r}: use an IANA name such as 'Asia/Shanghai'{hint}"


def config_from_dict(data: dict[str, Any], source: str | None = None) -> Config:
    """Build a Config from a (TOML-shaped) dict, rejecting unknown keys and bad values."""
    return _check(_build(Config(), data, "", source), source)


def load_config(path: str | Path | None) -> Config:
    """Load a TOML file over the defaults; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(p)) from exc
    return config_from_dict(data, source=str(p))


def iter_keys(config: Config | None = None, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf key as (dotted name, default value), for docs and tests."""
    obj = Config() if config is None else config
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            out += iter_keys(value, key)
        else:
            out.append((key, value))
    return out
