"""``make demo``: the live system on one machine, for a bounded time.

A private mosquitto (the project's config and ACL), ``emfence run`` with its SQLite store
in ``./demo-run/``, and the device simulator publishing for a few hundred subjects in
Wolong District, Nanyang (adcode 411303) and its neighbouring counties, with injected
events (boundary excursions, entries into exclusion zones, silent devices, strap opened,
low battery, and the hostile ones). Alarms are printed as they are raised and cleared,
as the console account receives them; at the end, a summary and the score against the
simulator's ground truth (``emfence score``).

The subjects and zones are enrolled in the register of the demo's store, and the engine
runs from that register (``emfence run --store`` alone). One subject whose injected
excursion goes into a neighbouring county gets a leave there: requested by an officer,
approved by a supervisor while the engine runs (applied live, no restart); the demo says
whether the excursion then raised no outbound alarm (:mod:`emfence.demo_register`).

To make a one-minute demo show offline alarms, the demo's config shortens the offline
thresholds (strict 15 s, ordinary 20 s, lenient 25 s) and the simulated day runs 30x
faster than the clock. Everything else is as shipped.

Notifications: the demo's config has a ``[notify.webhook]`` pointing at a webhook receiver
the demo runs itself (:mod:`emfence.webhook_receiver`, signature checked, duplicates
dropped); each notification it receives is printed as ``webhook <- ...``, and the end
says how many arrived against how many the store marked sent.

    python -m emfence.demo [--duration 60] [--subjects 300] [--rate 150] [--run-dir demo-run]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

DEMO_CONFIG = """\
# emfence demo: offline thresholds shortened so a one-minute run shows offline alarms.
[rules]
# Time runs 30 times faster and an injected detour crosses kilometres in seconds, so a
# bracelet's fix and its phone's even a second apart look separated: pair only fixes
# taken together (the separation scenarios of issue #14 come with their own numbers).
separation_window_s = 0.001

[rules.offline_after_s]
strict = 15
ordinary = 20
lenient = 25

[ingest]
restart_grace_s = 5
health_interval_s = 2
checkpoint_interval_s = 10

# the demo's own webhook receiver (emfence.webhook_receiver), on a free port
[notify.webhook]
url = "{url}"
secret_file = "{secret_file}"
"""


def _zone_names(zones_path: Path) -> dict[str, str]:
    fc = orjson.loads(zones_path.read_bytes())
    out = {}
    for f in fc["features"]:
        p = f["properties"]
        out[p["zone_id"]] = p.get("name") or p.get("kind") or ""
    return out


def _printer(t0_ms: list, names: dict[str, str]):
    def on_alarm(ev: dict) -> None:
        if ev.get("event") not in ("raised", "cleared", "escalated"):
            return
        rel = (ev.get("rx_ms", 0) - t0_ms[0]) / 1000.0 if t0_ms[0] else 0.0
        zone = ev.get("zone_id")
        where = f" zone {zone}" + (f" ({names[zone]})" if names.get(zone) else "") if zone else ""
        extra = ""
        if ev.get("distance_m") is not None and ev.get("event") == "raised":
            extra = f", {ev['distance_m']:.0f} m"
        lat = (f", {ev['rx_ms'] - ev['at']} ms after the fix"
               if ev.get("event") == "raised" and ev.get("type") != "offline" else "")
        print(f"[{rel:6.1f} s] {ev['event'].upper():<8} {ev['type']:<11} {ev.get('subject_id')}/"
              f"{ev.get('device_id')}{where}{extra}{lat}", flush=True)
    return on_alarm


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emfence.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of simulated traffic (default 60)")
    p.add_argument("--subjects", type=int, default=300, help="subjects to generate (default 300)")
    p.add_argument("--rate", type=float, default=150.0, help="messages per second (default 150)")
    p.add_argument("--run-dir", default="demo-run", help="folder for everything the run writes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--counties", help="comma-separated adcodes (default: 411303 and neighbours)")
    return p.parse_args(sys.argv[1:] if argv is None else argv)


def _prepare(args: argparse.Namespace, run: Path, hook, hook_secret: Path):
    """The run folder's files and the simulation over them (announced on stdout); the
    config sends notifications to the receiver ``hook`` signed with ``hook_secret``."""
    from emfence.config import load_config
    from simulators.cli import load_simulation
    from simulators.live import prepare_run_dir

    counties = [c for c in args.counties.split(",") if c] if args.counties else None
    print(f"emfence demo: preparing {args.subjects} subjects in {run}/ ...", flush=True)
    zones, subjects, config_path, secret, passwords = prepare_run_dir(
        run, subjects_n=args.subjects, seed=args.seed, counties=counties,
        config_toml=DEMO_CONFIG.format(url=hook.url, secret_file=hook_secret))
    config = load_config(config_path)
    sim = load_simulation(zones, subjects, rate=args.rate, duration_s=args.duration,
                          scenario="mixed", seed=args.seed, config=config, time_scale=30.0,
                          start_ms=int(time.time() * 1000) + 5_000)
    regions = Counter(sim.fleet.device_region)
    print(f"emfence demo: {sim.fleet.n_subjects} subjects, {sim.n} devices in {len(regions)} "
          f"counties ({', '.join(f'{r}: {n}' for r, n in regions.most_common())}); every "
          f"device reports every {sim.interval_ms / 1000:.1f} s; {len(sim.truth)} injected "
          "events", flush=True)
    return zones, subjects, config_path, secret, passwords, sim


def _publish(sim, rig, passwords: dict, names: dict[str, str], truth_path: Path,
             alarms_path: Path):
    """Publish the simulation until its end (or a signal), printing alarms as they come."""
    from simulators.cli import run_publish

    t0 = [0]

    async def go():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_publish(
            sim, rig.host, rig.port, credentials=rig.credentials(sim.fleet.device_ids),
            truth=truth_path, alarms_out=alarms_path, alarms_user="emfence-console",
            alarms_password=passwords["emfence-console"], linger_s=5.0, progress=True,
            stop=stop, on_alarm=_printer(t0, names),
            on_start=lambda s: t0.__setitem__(0, s.start_ms))  # after any shift

    return asyncio.run(go())


def _report(stats, code: int, run: Path, truth_path: Path, alarms_path: Path,
            leave=None) -> None:
    """What was sent, the alarms seen and the score against the ground truth."""
    from simulators.score import format_text, read_alarms, read_truth, score

    print(f"\nemfence demo: sent {stats.sent} messages ({dict(stats.by_kind)}), acknowledged "
          f"{stats.acked}, failed {stats.failed}; engine exited with {code}", flush=True)
    alarms = read_alarms(str(alarms_path))
    by = Counter((a["type"], a["event"]) for a in alarms if "type" in a)
    print("alarms seen on MQTT: " + ", ".join(f"{t} {e} {n}" for (t, e), n in sorted(by.items())))
    if leave is not None:
        from emfence.demo_register import verdict

        print(f"emfence demo: {verdict(leave, alarms)}")
    result = score(read_truth(truth_path), alarms)
    print("score against the ground truth (emfence score):")
    print(format_text(result))
    print(f"\nfiles: {run}/ (zones.geojson, subjects.json, truth.jsonl, alarms.jsonl, alarms.db, "
          f"alarms.tracks.db, engine.log); rescore with: emfence score --truth {truth_path} "
          f"--alarms {alarms_path}")


def _start(run: Path, zones: Path, subjects: Path, config_path: Path, secret: bytes,
           passwords: dict, leave):
    """The broker, the register (enrolment, the leave requested), the engine from the
    register, and the leave approved while it runs. Returns the rig."""
    from alarms.store import open_store
    from emfence import demo_register as dr
    from simulators.live import start_rig

    rig = start_rig(run, zones, subjects, config_path, secret, passwords, start_engine=False)
    try:
        store_url = dr.fresh_store(run)
        store = open_store(store_url)
        try:
            n = dr.enrol(store, zones, subjects)
            print(f"emfence demo: enrolled in the register of {store_url}: {n}", flush=True)
            if leave is not None:
                dr.request_leave(store, leave)
            print("emfence demo: starting `emfence run --store` (zones and subjects from the "
                  "register) ...", flush=True)
            dr.start_engine(rig, store_url)
            if leave is not None:
                dr.approve_leave(store, leave, rig.engine_log)
                applied = (f"the running engine applied it in {leave.applied_s:.1f} s"
                           if leave.applied_s is not None else "the engine did not say so")
                print(f"emfence demo: {dr.describe(leave)} requested by {dr.OFFICER}, "
                      f"approved by {dr.SUPERVISOR}; {applied}, no restart", flush=True)
        finally:
            store.close_store()
    except BaseException:
        rig.close()
        raise
    return rig


def _webhook_receiver(run: Path):
    """The demo's webhook receiver (started) and its secret file in ``run``."""
    import secrets

    from emfence.webhook_receiver import WebhookReceiver, describe

    run.mkdir(parents=True, exist_ok=True)
    secret_file = run / "webhook.secret"
    secret_file.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    hook = WebhookReceiver(secret_file.read_bytes().strip(), on_notification=lambda ev, d: print(
        f"           webhook <- {describe(ev)}", flush=True))
    return hook.start(), secret_file


def _webhook_report(hook, store_url: str) -> None:
    """What the receiver got against what the store says it delivered."""
    from alarms.store import open_store

    store = open_store(store_url)
    try:
        counts = store.notification_counts()
    finally:
        store.close_store()
    c = hook.counts
    print(f"webhook receiver: {c['received']} notifications received (signature checked), "
          f"{c['duplicates']} duplicates, {c['bad_signature']} bad signatures; the store: "
          f"{counts['sent']} sent, {counts['pending']} pending", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    run = Path(args.run_dir)
    hook, hook_secret = _webhook_receiver(run)
    try:
        return _demo(args, run, hook, hook_secret)
    finally:
        hook.close()


def _demo(args: argparse.Namespace, run: Path, hook, hook_secret: Path) -> int:
    from contract.errors import EmfenceError
    from emfence.demo_register import pick_leave

    zones, subjects, config_path, secret, passwords, sim = _prepare(args, run, hook, hook_secret)
    names = _zone_names(zones)
    leave = pick_leave(sim, zones, names)
    print("emfence demo: starting mosquitto, enrolling in the register ...", flush=True)
    try:
        rig = _start(run, zones, subjects, config_path, secret, passwords, leave)
    except (RuntimeError, OSError, EmfenceError) as exc:
        print(f"emfence demo: could not start the broker and the engine: {exc}", file=sys.stderr)
        return 1
    truth_path = run / "truth.jsonl"
    alarms_path = run / "alarms.jsonl"
    alarms_path.unlink(missing_ok=True)
    try:
        print(f"emfence demo: broker {rig.broker.url}, engine pid {rig.engine.pid}, "
              f"store {rig.store_url}", flush=True)
        print(f"emfence demo: publishing for {args.duration:g} s; alarms as the console "
              "receives them:", flush=True)
        stats = _publish(sim, rig, passwords, names, truth_path, alarms_path)
    finally:
        code = rig.stop_engine()
        rig.broker.close()
    _report(stats, code, run, truth_path, alarms_path, leave)
    _webhook_report(hook, rig.store_url)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
