"""``emfence user``: console accounts (add, list, disable, enable, password, role, lang).

::

    emfence user add alice --role operator --regions 411303,411302 --store sqlite:///a.db
    emfence user list --store sqlite:///a.db
    emfence user disable alice --store sqlite:///a.db
    emfence user password alice --store sqlite:///a.db          # new password on stdin
    emfence user role alice --role supervisor --regions 411303 --store sqlite:///a.db
    emfence user lang alice en --store sqlite:///a.db          # zh-CN, en, or none

The password is read from standard input (the first line; typed twice with no echo on a
terminal), never from the command line, where other users could see it in the process
list and it would stay in shell history.
"""

from __future__ import annotations

import argparse
import getpass
import gzip
import re
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TextIO

from alarms.schema import LANGS
from console.auth import ROLES, AuthError, check_role, hash_password, parse_regions

# Shorter passwords are refused: an operator account reaches personal location data.
MIN_PASSWORD_CHARS = 10

# A region is any topic level (console.auth); one that is mostly digits is meant as a
# Chinese adcode, and a county's adcode is 6 digits not ending in 00 (xx0000 is a
# province, xxxx00 a city).
_MOSTLY_DIGITS = re.compile(r"^(?=(?:\D*\d){4})[A-Za-z0-9]+$")


@lru_cache(maxsize=1)
def _bundled_counties() -> tuple[str, frozenset[str]]:
    """The province prefix of the bundled county data and its counties' adcodes."""
    import orjson

    from geofence.data import henan_counties_path

    doc = orjson.loads(gzip.decompress(henan_counties_path().read_bytes()))
    codes = frozenset(str(f["properties"]["zone_id"]) for f in doc["features"])
    return "41", codes


def zone_ids(path: str) -> frozenset[str]:
    """The zone ids of a zone file (raises AuthError naming the file)."""
    from geofence.zones import ZoneError, load_zones

    try:
        return frozenset(z.zone_id for z in load_zones(path))
    except (ZoneError, OSError) as exc:
        raise AuthError(f"--zones {path}: {exc}") from None


def region_problem(code: str, known: frozenset[str] | None = None) -> str | None:
    """Why ``code`` cannot be a region an account sees, or ``None``.

    A code meant as an adcode (mostly digits) must be 6 digits of a county; one in the
    province of the bundled boundaries must be one of its counties; with ``known`` (the
    zone ids of the centre's zone file) it must be one of them.
    """
    if _MOSTLY_DIGITS.match(code):
        if not code.isdigit():
            odd = ", ".join(repr(c) for c in code if not c.isdigit())
            return f"region {code!r} is not an adcode: {odd} where a digit belongs"
        if len(code) != 6:
            return f"region {code!r} is not an adcode: a county code has 6 digits"
        if code.endswith("0000"):
            return f"region {code!r} is a province's adcode; give its counties' codes"
        if code.endswith("00"):
            return f"region {code!r} is a city's adcode; give its counties' codes"
        prefix, counties = _bundled_counties()
        if known is None and code.startswith(prefix) and code not in counties:
            return f"region {code!r} is not a county of province {prefix}0000"
    if known is not None and code not in known:
        return f"region {code!r} is not a zone of the --zones file"
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def read_password(stdin: TextIO) -> str:
    """The new password: prompted twice without echo on a terminal, else the first line."""
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AuthError("the two passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emfence user", description="Console accounts.")
    sub = p.add_subparsers(dest="verb", required=True,
                           metavar="{add,list,disable,enable,password,role,lang}")
    store_help = "alarm store URL: sqlite:///path or postgresql://..."
    zones_help = ("the centre's zone file: every region must be one of its zones (without "
                  "it, adcodes are checked for form and against the bundled Henan counties)")

    add = sub.add_parser("add", help="create an account (password from stdin)")
    add.add_argument("name", help="login name (1-64 letters, digits, '_', '.', '@', '-')")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--regions", default="",
                     help="comma-separated county codes the account may see, e.g. 411303,411302 "
                          "(required except for admin, who sees every region)")
    add.add_argument("--store", required=True, help=store_help)
    add.add_argument("--zones", metavar="FILE", help=zones_help)
    add.add_argument("--lang", choices=LANGS, help="the console's language for this account "
                     "(default: none chosen, the browser's; the account can change it)")

    ls = sub.add_parser("list", help="list accounts")
    ls.add_argument("--store", required=True, help=store_help)

    for verb, text in (("disable", "disable an account (it can no longer log in)"),
                       ("enable", "enable a disabled account"),
                       ("password", "set a new password (from stdin)")):
        sp = sub.add_parser(verb, help=text)
        sp.add_argument("name")
        sp.add_argument("--store", required=True, help=store_help)

    role = sub.add_parser("role", help="change an account's role and regions")
    role.add_argument("name")
    role.add_argument("--role", required=True, choices=ROLES)
    role.add_argument("--regions", default="", help="comma-separated county codes (all "
                      "the account may see from now on; required except for admin)")
    role.add_argument("--store", required=True, help=store_help)
    role.add_argument("--zones", metavar="FILE", help=zones_help)

    lang = sub.add_parser("lang", help="set an account's console language")
    lang.add_argument("name")
    lang.add_argument("lang", choices=(*LANGS, "none"),
                      help="none: not chosen (the page follows the browser's language)")
    lang.add_argument("--store", required=True, help=store_help)
    return p


def _role_and_regions(args: argparse.Namespace) -> tuple[str, tuple[str, ...]]:
    role = check_role(args.role)
    regions = parse_regions(args.regions)
    known = zone_ids(args.zones) if args.zones else None
    for code in regions:
        problem = region_problem(code, known)
        if problem:
            raise AuthError(problem)
    if role != "admin" and not regions:
        raise AuthError("--regions is required for operators and supervisors")
    return role, regions


def main(argv: list[str], *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run ``emfence user``; exit 0 done, 1 a problem to fix (named on stderr), 2 bad usage."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

    from alarms.store import StoreError, UserError, open_store

    try:
        if args.verb == "add":
            return _add(args, open_store, stdin, stdout)
        store = open_store(args.store)
        try:
            return _change(store, args, stdin, stdout)
        finally:
            store.close_store()
    except (AuthError, UserError, StoreError) as exc:
        # One line: a driver's message (PostgreSQL's "Is the server running...") has several.
        print(f"emfence user {args.verb}: {' '.join(str(exc).split())}", file=stderr)
        return 1


def _add(args: argparse.Namespace, open_store: Callable[[str], Any], stdin: TextIO,
         stdout: TextIO) -> int:
    """``emfence user add``: the role, regions and password are checked before the store
    is opened."""
    name = args.name
    role, regions = _role_and_regions(args)
    password = read_password(stdin)
    store = open_store(args.store)
    try:
        # The store checks the name, refuses a duplicate and audits the creation.
        store.add_user(name, hash_password(password), role, list(regions), _now_ms(),
                       lang=args.lang)
    finally:
        store.close_store()
    print(f"added {role} {name}" + (f" for {','.join(regions)}" if regions else ""),
          file=stdout)
    return 0


def _change(store: Any, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """``emfence user list|password|role|lang|disable|enable`` on an open store."""
    if args.verb == "list":
        rows = store.list_users()
        print(f"{'name':<20} {'role':<10} {'state':<8} regions", file=stdout)
        for row in rows:
            state = "disabled" if row["disabled"] else "active"
            shown = ",".join(row["regions"]) or "(all)"
            print(f"{row['name']:<20} {row['role']:<10} {state:<8} {shown}", file=stdout)
        return 0
    if args.verb == "password":
        # The store audits the change (without the hash); the console ends the
        # account's open sessions at their next request.
        store.set_user_password(args.name, hash_password(read_password(stdin)), _now_ms())
        print(f"new password set for {args.name}", file=stdout)
        return 0
    if args.verb == "role":
        role, regions = _role_and_regions(args)
        store.set_user_role(args.name, role, list(regions), _now_ms())
        print(f"{args.name} is now {role}"
              + (f" for {','.join(regions)}" if regions else ""), file=stdout)
        return 0
    if args.verb == "lang":
        lang = None if args.lang == "none" else args.lang
        store.set_user_lang(args.name, lang, _now_ms())
        print(f"{args.name}'s console language: {lang or 'none chosen'}", file=stdout)
        return 0
    store.set_user_disabled(args.name, args.verb == "disable", _now_ms())
    print(f"{args.verb}d {args.name}", file=stdout)
    return 0
