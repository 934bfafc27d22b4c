"""``emfence register``: bulk work on the supervision register in a store.

- ``emfence register import --subjects S.json --zones Z.geojson --store URL [--actor NAME]``
  reads today's files (docs/replay.md, docs/zones.md) into the register: zones, then
  subjects, in one transaction. Importing the same files again changes nothing; a zone
  or subject already there with other content is refused, naming it.
- ``emfence register export --store URL -o DIR`` writes ``DIR/zones.geojson`` and
  ``DIR/subjects.json`` as the register is now, the files ``emfence replay --zones
  --subjects`` and ``emfence run`` read.
- ``emfence register contacts S-1 [--set S-2,S-3] --store URL`` shows (or sets) a
  subject's prohibited contacts; ``emfence register protected add|end|list`` enrols, ends
  and lists protected persons (docs/register.md, "Relations").

Exit 0 done, 1 a problem the user must fix (one line on stderr naming the file, the
zone or the subject), 2 bad usage.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from alarms.db import StoreError
from alarms.register_check import RegisterError
from alarms.store import open_store
from contract.errors import EmfenceError


class _Failure(EmfenceError):
    """A problem to report in one line (exit 1)."""


def _read_json(path: str) -> Any:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _Failure(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise _Failure(f"{path}: not a valid gzip file: {exc}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Failure(f"{path}: not valid JSON: {exc}") from None


def _import(args: argparse.Namespace) -> str:
    zones = (_read_json(args.zones) if args.zones
             else {"type": "FeatureCollection", "features": []})
    subjects = _read_json(args.subjects) if args.subjects else {"subjects": []}
    with open_store(args.store) as store:
        try:
            counts = store.register.import_files(zones, subjects, actor=args.actor,
                                                 now_ms=time.time_ns() // 1_000_000)
        except RegisterError as exc:
            where = args.zones if (exc.field or "").startswith(("features", "zones")) \
                else args.subjects
            raise _Failure(f"{where}: {exc} (nothing was imported)") from None
    return (f"imported {counts['zones_added']} zones ({counts['zones_kept']} already there) "
            f"and {counts['subjects_added']} subjects ({counts['subjects_kept']} already "
            f"there), {counts['contacts_added']} contact pairs and {counts['protected_added']} "
            f"protected persons ({counts['protected_kept']} already there) into {args.store}")


def _now() -> int:
    return time.time_ns() // 1_000_000


def _relations(args: argparse.Namespace) -> str:
    """``contacts`` and ``protected``: one register call each, a RegisterError in one line."""
    with open_store(args.store) as store:
        reg = store.register
        try:
            if args.command == "contacts":
                if args.set is None:
                    return " ".join(reg.contacts(args.subject)) or "(none)"
                others = [x for x in args.set.split(",") if x]
                done = reg.set_contacts(args.subject, others, actor=args.actor, now_ms=_now(),
                                        reason=args.reason)
                return f"{args.subject}: contacts {', '.join(done) or '(none)'}"
            if args.action == "add":
                p = reg.add_protected({"person_id": args.person, "name": args.name,
                                       "region": args.region, "devices": args.device,
                                       "protected_from": args.protected_from,
                                       "note": args.note}, actor=args.actor, now_ms=_now())
                return (f"protected person {p['person_id']} ({p['region']}): devices "
                        f"{', '.join(p['devices'])}, protected from "
                        f"{', '.join(p['protected_from'])}")
            if args.action == "end":
                reg.end_protected(args.person, actor=args.actor, now_ms=_now(),
                                  reason=args.reason)
                return f"protection of {args.person} ended"
            return "\n".join(f"{p['person_id']}\t{p['region']}\t{','.join(p['devices'])}\t"
                             f"{','.join(p['protected_from'])}"
                             for p in reg.list_protected()) or "(none)"
        except RegisterError as exc:
            raise _Failure(str(exc)) from None


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        tmp.replace(path)  # readers never see a half-written file
    except OSError as exc:
        raise _Failure(f"{path}: cannot write: {exc.strerror or exc}") from None


def _export(args: argparse.Namespace) -> str:
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(f"{out}: cannot create the folder: {exc.strerror or exc}") from None
    with open_store(args.store) as store:
        zones, subjects = store.register.snapshot()
    _write(out / "zones.geojson", zones)
    _write(out / "subjects.json", subjects)
    return (f"wrote {len(zones['features'])} zones to {out / 'zones.geojson'} and "
            f"{len(subjects['subjects'])} subjects to {out / 'subjects.json'}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emfence register",
                                description="bulk work on the supervision register in a store")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="read a zones file and a subjects file into the register")
    imp.add_argument("--subjects", help="subjects file (docs/replay.md)")
    imp.add_argument("--zones", help="zones file (docs/zones.md)")
    imp.add_argument("--store", required=True, help="store URL (sqlite:///... or postgresql://...)")
    imp.add_argument("--actor", default="import", help="account name the audit log records")
    exp = sub.add_parser("export", help="write the register as a zones file and a subjects file")
    exp.add_argument("--store", required=True, help="store URL")
    exp.add_argument("-o", "--output", required=True, help="folder to write the two files in")
    con = sub.add_parser("contacts", help="show or set a subject's prohibited contacts")
    con.add_argument("subject", help="subject id")
    con.add_argument("--set", metavar="IDS", help="comma-separated subject ids ('' for none)")
    con.add_argument("--reason", help="why (e.g. the court order's number)")
    pro = sub.add_parser("protected", help="protected persons (victims with a device)")
    pro.add_argument("action", choices=("add", "end", "list"))
    pro.add_argument("--person", help="person id (add, end)")
    pro.add_argument("--name", help="the person's name (add)")
    pro.add_argument("--region", help="supervising county code (add)")
    pro.add_argument("--device", action="append", default=[],
                     help="device id of kind victim (add; repeat for several)")
    pro.add_argument("--protected-from", action="append", default=[], metavar="SUBJECT",
                     help="subject id (add; repeat for several)")
    pro.add_argument("--note", help="e.g. the protection order (add)")
    pro.add_argument("--reason", help="why the protection ends (end)")
    for sp in (con, pro):
        sp.add_argument("--store", required=True, help="store URL")
        sp.add_argument("--actor", default="cli", help="account name the audit log records")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "import" and not (args.subjects or args.zones):
        parser.error("import needs --subjects and/or --zones")
    if args.command == "protected" and args.action != "list" and not args.person:
        parser.error(f"protected {args.action} needs --person")
    run = {"import": _import, "export": _export}.get(args.command, _relations)
    try:
        message = run(args)
    except (_Failure, StoreError) as exc:
        text = " ".join(str(exc).split())  # a driver's multi-line message on one line
        print(f"emfence register {args.command}: {text}", file=sys.stderr)
        return 1
    print(message)
    return 0
