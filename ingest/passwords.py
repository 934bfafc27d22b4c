"""`emfence mqtt-passwords`: the mosquitto password file for a subjects file.

Every device logs in to the broker with its ``device_id`` as username and a password
derived from one site secret::

    password = base64url(HMAC-SHA256(secret, "emfence-mqtt-v1:" + device_id))   # 43 chars

so provisioning (flashing a bracelet), the device simulator and this command all
compute the same password without a shared list of passwords, and the secret file is
the one thing to protect. The broker stores only salted PBKDF2-SHA512 hashes in the
format mosquitto 2 reads (``user:$7$iterations$salt$hash``), written here directly
rather than by running ``mosquitto_passwd`` once per device.

The service accounts (one per engine worker, the console, the test-only load
generator) get their passwords from files the operator chooses, and ``--acl-output``
writes the ACL those accounts need; see docs/operations.md.

The shipped broker config binds a session to its account (``use_username_as_clientid``),
so each account is one connection: every engine worker NAME has its own account
``emfence-NAME`` (its client id too), and a pool of load-generator connections uses
``emfence-loadgen-1`` ... ``emfence-loadgen-N``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import hmac
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

from contract.errors import EmfenceError
from engine.registry import RegistryError, read_subjects_file
from ingest.decode import ID_RE

# The shipped ACL, the template of every ACL written here (and of the private brokers the
# tests, the demo and the benchmarks start: ingest/mosquitto.py).
ACL_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "emfence.acl"

# mosquitto_passwd's own iteration count. Device passwords are 256-bit random values,
# so more iterations would add nothing against guessing and would cost the broker CPU
# in a reconnect storm of every device at once.
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12
DERIVATION_LABEL = b"emfence-mqtt-v1:"
MIN_SECRET_BYTES = 16

# Every service account starts with this; device ids may not (docs/wire-protocol.md).
SERVICE_PREFIX = "emfence-"
DEFAULT_WORKER = "engine-1"
CONSOLE_USER = "emfence-console"
LOADGEN_USER = "emfence-loadgen"
_LOADGEN_POOL_RE = re.compile(r"emfence-loadgen-[0-9]+")
# Further readers of alarms, dead letters and health (monitoring, integrations): each
# connection needs an account of its own, emfence-console-NAME, with the console's rules.
_CONSOLE_MORE_RE = re.compile(r"emfence-console-[A-Za-z0-9_-]+")
# Template account of each kind in the shipped ACL (deploy/mosquitto/emfence.acl).
ACL_TEMPLATE_ACCOUNTS = {"engine": f"{SERVICE_PREFIX}{DEFAULT_WORKER}", "console": CONSOLE_USER,
                         "loadgen": LOADGEN_USER}


def engine_account(worker_name: str) -> str:
    """The broker account (and client id) of engine worker ``worker_name``: ``emfence-NAME``."""
    return f"{SERVICE_PREFIX}{worker_name}"


ENGINE_USER = engine_account(DEFAULT_WORKER)


def loadgen_pool_account(username: str, k: int) -> str:
    """The account of pooled load-generator connection ``k`` (1-based): ``USER-k``."""
    return f"{username}-{k}"


def service_role(username: str) -> str | None:
    """``"engine"``, ``"console"``, ``"loadgen"`` for a service account, ``None`` otherwise.

    ``emfence-console[-NAME]`` and ``emfence-loadgen[-N]`` are what they say; any other
    ``emfence-NAME`` is the account of engine worker NAME.
    """
    if username == CONSOLE_USER or _CONSOLE_MORE_RE.fullmatch(username):
        return "console"
    if username == LOADGEN_USER or _LOADGEN_POOL_RE.fullmatch(username):
        return "loadgen"
    if username.startswith(SERVICE_PREFIX) and len(username) > len(SERVICE_PREFIX):
        return "engine"
    return None


def engine_client_id(worker_name: str, username: str | None) -> str:
    """The client id of an engine worker's persistent session: its login when it has one
    (a broker with ``use_username_as_clientid`` uses that whatever the client sends, so
    the session is the same on brokers with and without it), else ``emfence-NAME``."""
    return username or engine_account(worker_name)


def worker_name_problem(worker_name: str) -> str | None:
    """Why ``worker_name`` cannot be an engine worker's name, or ``None`` if it can."""
    if not ID_RE.fullmatch(worker_name):
        return f"{worker_name!r} is not [A-Za-z0-9_-]{{1,64}}"
    role = service_role(engine_account(worker_name))
    if role != "engine":
        return (f"{worker_name!r} would log in as {engine_account(worker_name)}, the {role} "
                "account; choose another worker name")
    return None


class PasswordsError(EmfenceError, ValueError):
    """Bad input to the password tooling; the message names the file and the entry."""


def password_line(username: str, password: str, *, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """One mosquitto 2 password-file line: ``username:$7$iter$b64(salt)$b64(hash)``.

    ``$7$`` is PBKDF2-HMAC-SHA512 with a 64-byte derived key, as ``mosquitto_passwd``
    writes it.
    """
    if ":" in username or "\n" in username or not username:
        raise PasswordsError(f"username {username!r} cannot be written to a password file")
    if "\n" in password or not password:
        raise PasswordsError(f"password for {username!r} is empty or has a newline")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return (f"{username}:$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def device_password(secret: bytes, device_id: str) -> str:
    """The MQTT password of ``device_id`` under the site ``secret`` (43 URL-safe characters)."""
    mac = hmac.new(secret, DERIVATION_LABEL + device_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def read_secret(path: str | Path) -> bytes:
    """The site secret: the file's bytes without surrounding whitespace (at least 16)."""
    p = Path(path)
    try:
        secret = p.read_bytes().strip()
    except OSError as exc:
        raise PasswordsError(f"{p}: cannot read the secret file: {exc.strerror} (create one with "
                             f"`head -c 32 /dev/urandom | base64 > {p}; chmod 600 {p}`)") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise PasswordsError(f"{p}: secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                             "are needed")
    return secret


def read_password_file(path: str | Path, what: str) -> str:
    """A service account's password: the first line of a file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PasswordsError(f"{p}: cannot read the {what} password file: {exc.strerror}") from None
    pw = text.splitlines()[0].strip() if text.strip() else ""
    if not pw:
        raise PasswordsError(f"{p}: the {what} password file is empty")
    return pw


def devices_of_subjects(data: Any, source: str = "subjects") -> list[tuple[str, str, str]]:
    """``(device_id, region, subject_id)`` for every device of a subjects document.

    Reads the subjects file format of ``engine.load_registry`` (a ``subjects`` list, or a
    bare list, of subjects with ``subject_id``, ``region`` and ``devices``; a device is a
    string id or an object with ``device_id``), and the devices of its ``protected``
    persons (``person_id`` in place of the subject id). Only what the broker needs is checked
    here: ids are valid topic levels, unique, and not a service account's name.
    """
    subjects = data.get("subjects") if isinstance(data, dict) else data
    if not isinstance(subjects, list):
        raise PasswordsError(f"{source}: expected a list of subjects (or {{\"subjects\": [...]}})")
    protected = data.get("protected") if isinstance(data, dict) else None
    if isinstance(protected, list):  # protected persons' devices (kind victim) publish too
        subjects = subjects + [{**p, "subject_id": p.get("person_id", f"protected[{i}]")}
                               if isinstance(p, dict) else p for i, p in enumerate(protected)]
    out: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    for i, subj in enumerate(subjects):
        if not isinstance(subj, dict):
            raise PasswordsError(f"{source}: subjects[{i}] is not an object")
        sid = str(subj.get("subject_id", subj.get("id", f"#{i}")))
        region = subj.get("region")
        if not isinstance(region, str) or not ID_RE.fullmatch(region):
            raise PasswordsError(f"{source}: subject {sid}: region {region!r} is not "
                                 "[A-Za-z0-9_-]{1,64}")
        devices = subj.get("devices", [])
        if not isinstance(devices, list):
            raise PasswordsError(f"{source}: subject {sid}: devices must be a list")
        for j, dev in enumerate(devices):
            did = dev.get("device_id", dev.get("id")) if isinstance(dev, dict) else dev
            if not isinstance(did, str) or not ID_RE.fullmatch(did):
                raise PasswordsError(f"{source}: subject {sid}: devices[{j}] id {did!r} is not "
                                     "[A-Za-z0-9_-]{1,64}")
            if did.startswith(SERVICE_PREFIX):
                raise PasswordsError(f"{source}: subject {sid}: device id {did!r}: ids starting "
                                     f"with {SERVICE_PREFIX!r} are reserved for service accounts")
            if did in seen:
                raise PasswordsError(f"{source}: device {did!r} belongs to subjects {seen[did]} "
                                     f"and {sid}")
            seen[did] = sid
            out.append((did, region, sid))
    return out


def _write_private(path: Path, text: str, *, keep_existing: bool = False) -> str | None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory,
    fsynced, then renamed over ``path``, so a reader (mosquitto at a SIGHUP) sees the old
    file or the new one, never half of one.

    A new file gets mode 0600 (password hashes and credentials are secrets). With
    ``keep_existing``, a file already at ``path`` keeps its mode, owner and group: the
    broker reads it as its own user (``chown mosquitto:``), and a re-run as root must not
    lock the broker out at its next reload. Returns a warning when the owner could not be
    kept (not running as root), else ``None``.
    """
    mode, owner, warning = 0o600, None, None
    if keep_existing:
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), *owner)
                except PermissionError:
                    warning = (f"{path}: could not keep its owner uid {owner[0]} gid {owner[1]} "
                               "(run as root, or chown it back before reloading mosquitto)")
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return warning


def build_password_file(devices: list[tuple[str, str, str]], secret: bytes,
                        services: dict[str, str], iterations: int = DEFAULT_ITERATIONS) -> str:
    """The password-file text: service accounts first, then one line per device."""
    lines = [password_line(u, p, iterations=iterations) for u, p in services.items()]
    lines += [password_line(d, device_password(secret, d), iterations=iterations)
              for d, _, _ in devices]
    return "".join(line + "\n" for line in lines)


def build_acl(accounts, template: str | Path | None = None, *,
              roles: dict[str, str] | None = None) -> str:
    """The ACL for ``accounts``: the template (default: the shipped
    ``deploy/mosquitto/emfence.acl``) with a copy of its engine, console or load-generator
    ``user`` block for every service account among ``accounts`` it does not name yet.

    The kind of an account is :func:`service_role`'s, or ``roles[account]``. Devices need
    nothing: the template's ``pattern`` lines cover every login. The copy of a kind's
    block goes right after the template's block of that kind.
    """
    path = Path(ACL_TEMPLATE if template is None else template)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PasswordsError(f"{path}: cannot read the ACL template: {exc.strerror} (give the "
                             "project's deploy/mosquitto/emfence.acl with --acl-template)"
                             ) from None
    lines = text.splitlines()
    users = {ln.split(None, 1)[1].strip(): i for i, ln in enumerate(lines)
             if ln.startswith("user ") and len(ln.split()) == 2}
    rules: dict[str, tuple[int, list[str]]] = {}  # kind -> (last line of its block, topic lines)
    for kind, account in ACL_TEMPLATE_ACCOUNTS.items():
        if account not in users:
            raise PasswordsError(f"{path}: no `user {account}` block to copy {kind} accounts from")
        end = users[account] + 1
        while end < len(lines) and lines[end].strip() and not lines[end].startswith("user "):
            end += 1
        rules[kind] = (end, [ln for ln in lines[users[account] + 1:end]
                             if ln.startswith("topic ")])
    extra: dict[int, list[str]] = {}
    for account in dict.fromkeys(accounts):
        kind = (roles or {}).get(account) or service_role(account)
        if kind is None or account in users:
            continue
        end, topics = rules[kind]
        extra.setdefault(end, []).extend(["", f"user {account}", *topics])
    out: list[str] = []
    for i, line in enumerate(lines):
        out.extend(extra.get(i, []))
        out.append(line)
    out.extend(extra.get(len(lines), []))
    return "\n".join(out) + "\n"


def _reader_option(text: str) -> tuple[str, str]:
    name, sep, pw_file = text.partition("=")
    if not sep or not pw_file or not ID_RE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PASSWORD_FILE, NAME of "
                                         "[A-Za-z0-9_-]")
    return name, pw_file


def _engine_option(text: str) -> tuple[str, str]:
    name, sep, pw_file = text.partition("=")
    if not sep or not pw_file:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PASSWORD_FILE")
    problem = worker_name_problem(name)
    if problem:
        raise argparse.ArgumentTypeError(f"worker name {problem}")
    return name, pw_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emfence mqtt-passwords",
        description="Build the mosquitto password file for every device of a subjects file "
                    "(device passwords derived from a site secret) plus the service accounts.")
    parser.add_argument("subjects", help="subjects JSON file (the one `emfence run` loads)")
    parser.add_argument("-o", "--output",
                        help="password file to write (atomically; a new file gets mode 0600, "
                             "an existing one keeps its mode and owner); default: standard "
                             "output")
    parser.add_argument("--secret-file", required=True,
                        help="file holding the site secret the device passwords derive from")
    parser.add_argument("--engine", action="append", default=[], type=_engine_option,
                        metavar="NAME=PASSWORD_FILE",
                        help="add the account emfence-NAME of the engine worker "
                             "`emfence run --name NAME` (repeat for each worker)")
    parser.add_argument("--console-user", default=CONSOLE_USER)
    parser.add_argument("--console-password-file", help="add the console account")
    parser.add_argument("--reader", action="append", default=[], type=_reader_option,
                        metavar="NAME=PASSWORD_FILE",
                        help=f"add the account {CONSOLE_USER}-NAME with the console's rights, "
                             "for one more reader of alarms, dead letters and health "
                             "(monitoring, an integration; each connection needs its own)")
    parser.add_argument("--loadgen-password-file",
                        help=f"add the TEST-ONLY load generator accounts ({LOADGEN_USER} and "
                             f"{LOADGEN_USER}-1 ... -N, one per pooled connection); never on a "
                             "production broker")
    parser.add_argument("--loadgen-pool", type=int, default=8, metavar="N",
                        help="pooled load-generator connections to make accounts for (default 8)")
    parser.add_argument("--acl-output", metavar="PATH",
                        help="also write the mosquitto ACL with a block for each service "
                             "account written (atomically, like -o)")
    parser.add_argument("--acl-template", metavar="PATH",
                        help="the ACL to extend (default: the project's "
                             "deploy/mosquitto/emfence.acl)")
    parser.add_argument("--credentials-csv", metavar="PATH",
                        help="also write device_id,region,subject_id,username,password for "
                             "provisioning (mode 0600; '-' for standard output)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"PBKDF2 iterations (default {DEFAULT_ITERATIONS}, "
                             "as mosquitto_passwd)")
    return parser


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.loadgen_pool < 1:
        parser.error("--loadgen-pool must be at least 1")
    workers = [name for name, _ in args.engine]
    if len(set(workers)) != len(workers):
        parser.error("--engine: each worker name once (every worker has its own account)")
    return args


def _read_devices(subjects: str) -> list[tuple[str, str, str]]:
    """(device_id, region, subject_id) of every device of the subjects file (read by the
    engine's reader, so every command words a bad file alike)."""
    try:
        data, _ = read_subjects_file(subjects)
    except RegistryError as exc:
        raise PasswordsError(str(exc)) from None
    return devices_of_subjects(data, subjects)


def _service_accounts(args: argparse.Namespace, devices) -> dict[str, str]:
    """Account -> password of every service account given a password file."""
    services: dict[str, str] = {}
    wanted = [(engine_account(name), pw_file, f"engine worker {name}")
              for name, pw_file in args.engine]
    wanted.append((args.console_user, args.console_password_file, "console"))
    wanted += [(f"{CONSOLE_USER}-{name}", pw_file, f"reader {name}")
               for name, pw_file in args.reader]
    if args.loadgen_password_file:
        wanted += [(user, args.loadgen_password_file, "load generator")
                   for user in [LOADGEN_USER] + [loadgen_pool_account(LOADGEN_USER, k)
                                                 for k in range(1, args.loadgen_pool + 1)]]
    for user, pw_file, what in wanted:
        if pw_file:
            if any(user == d for d, _, _ in devices):
                raise PasswordsError(f"{what} user {user!r} is also a device id")
            services[user] = read_password_file(pw_file, what)
    return services


def _write_outputs(args: argparse.Namespace, devices, secret: bytes, services: dict[str, str],
                   text: str, acl: str | None) -> None:
    """Write the password file (or print it), the ACL and the credentials CSV asked for."""
    if args.output:
        warning = _write_private(Path(args.output), text, keep_existing=True)
        print(f"wrote {len(devices)} devices and {len(services)} service accounts to "
              f"{args.output}", file=sys.stderr)
        if warning:
            print(f"emfence mqtt-passwords: warning: {warning}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if acl is not None:
        warning = _write_private(Path(args.acl_output), acl, keep_existing=True)
        print(f"wrote the ACL for {len(services)} service accounts to {args.acl_output}",
              file=sys.stderr)
        if warning:
            print(f"emfence mqtt-passwords: warning: {warning}", file=sys.stderr)
    if args.credentials_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["device_id", "region", "subject_id", "username", "password"])
        for did, region, sid in devices:
            w.writerow([did, region, sid, did, device_password(secret, did)])
        if args.credentials_csv == "-":
            sys.stdout.write(buf.getvalue())
        else:
            _write_private(Path(args.credentials_csv), buf.getvalue())


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        secret = read_secret(args.secret_file)
        devices = _read_devices(args.subjects)
        services = _service_accounts(args, devices)
        text = build_password_file(devices, secret, services, args.iterations)
        acl = (build_acl(services, args.acl_template, roles={args.console_user: "console"})
               if args.acl_output else None)
    except PasswordsError as exc:
        print(f"emfence mqtt-passwords: {exc}", file=sys.stderr)
        return 1
    if not any(service_role(u) == "engine" for u in services):
        # `emfence run` logs in as emfence-NAME: a broker given this file refuses it.
        print("emfence mqtt-passwords: warning: no engine account; `emfence run --name NAME` "
              "logs in as emfence-NAME and this broker will refuse it (add --engine "
              "NAME=PASSWORD_FILE for every worker)", file=sys.stderr)
    try:
        _write_outputs(args, devices, secret, services, text, acl)
    except OSError as exc:
        print(f"emfence mqtt-passwords: {exc.filename}: cannot write: {exc.strerror}",
              file=sys.stderr)
        return 1
    if args.output or acl is not None:
        # mosquitto reads both files only at start and on SIGHUP.
        print("now reload mosquitto so it reads them: `systemctl reload mosquitto` (or "
              "`kill -HUP` its pid)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
