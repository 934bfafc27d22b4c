"""``emfence register``: bulk work on the supervision register in a store.

- ``emfence register import --subjects S.json --zones Z.geojson --store URL [--actor NAME]``
  reads today's files (docs/replay.md, docs/zones.md) into the register: zones, then
  subjects, in one transaction. Importing the same files again changes nothing; a zone
  or subject already there with other content is refused, naming it.
- ``emfence register export --store URL -o DIR`` writes ``DIR/zones.geojson`` and
  ``DIR/subjects.json`` as the register is now, the files ``emfence replay --zones
  --subjects`` and ``emfence run`` read.

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
            f"there) into {args.store}")


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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "import" and not (args.subjects or args.zones):
        parser.error("import needs --subjects and/or --zones")
    try:
        message = _import(args) if args.command == "import" else _export(args)
    except (_Failure, StoreError) as exc:
        text = " ".join(str(exc).split())  # a driver's multi-line message on one line
        print(f"emfence register {args.command}: {text}", file=sys.stderr)
        return 1
    print(message)
    return 0
