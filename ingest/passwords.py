"""`emfence mqtt-passwords`: the mosquitto password file for a subjects file.

Every device logs in to the broker with its ``device_id`` as username and a password
derived from one site secret::

    password = base64url(HMAC-SHA256(secret, "emfence-mqtt-v1:" + device_id))   # 43 chars

so provisioning (flashing a bracelet), the device simulator and this command all
compute the same password without a shared list of passwords, and the secret file is
the one thing to protect. The broker stores only salted PBKDF2-SHA512 hashes in the
format mosquitto 2 reads (``user:$7$iterations$salt$hash``), written here directly
rather than by running ``mosquitto_passwd`` once per device.

The service accounts (engine, console, test-only load generator) get their passwords
from files the operator chooses; see docs/operations.md.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import hmac
import io
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from ingest.decode import ID_RE

# mosquitto_passwd's own iteration count. Device passwords are 256-bit random values,
# so more iterations would add nothing against guessing and would cost the broker CPU
# in a reconnect storm of every device at once.
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12
DERIVATION_LABEL = b"emfence-mqtt-v1:"
MIN_SECRET_BYTES = 16

ENGINE_USER = "emfence-engine"
CONSOLE_USER = "emfence-console"
LOADGEN_USER = "emfence-loadgen"
SERVICE_USERS = (ENGINE_USER, CONSOLE_USER, LOADGEN_USER)


class PasswordsError(ValueError):
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
    string id or an object with ``device_id``). Only what the broker needs is checked
    here: ids are valid topic levels, unique, and not a service account's name.
    """
    subjects = data.get("subjects") if isinstance(data, dict) else data
    if not isinstance(subjects, list):
        raise PasswordsError(f"{source}: expected a list of subjects (or {{\"subjects\": [...]}})")
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
            if did in SERVICE_USERS:
                raise PasswordsError(f"{source}: subject {sid}: device id {did!r} is reserved for "
                                     "a service account")
            if did in seen:
                raise PasswordsError(f"{source}: device {did!r} belongs to subjects {seen[did]} "
                                     f"and {sid}")
            seen[did] = sid
            out.append((did, region, sid))
    return out


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (password hashes and credentials are secrets)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_password_file(devices: list[tuple[str, str, str]], secret: bytes,
                        services: dict[str, str], iterations: int = DEFAULT_ITERATIONS) -> str:
    """The password-file text: service accounts first, then one line per device."""
    lines = [password_line(u, p, iterations=iterations) for u, p in services.items()]
    lines += [password_line(d, device_password(secret, d), iterations=iterations)
              for d, _, _ in devices]
    return "".join(line + "\n" for line in lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emfence mqtt-passwords",
        description="Build the mosquitto password file for every device of a subjects file "
                    "(device passwords derived from a site secret) plus the service accounts.")
    parser.add_argument("subjects", help="subjects JSON file (the one `emfence run` loads)")
    parser.add_argument("-o", "--output", help="password file to write (mode 0600); "
                        "default: standard output")
    parser.add_argument("--secret-file", required=True,
                        help="file holding the site secret the device passwords derive from")
    parser.add_argument("--engine-user", default=ENGINE_USER)
    parser.add_argument("--engine-password-file", help="add the engine account")
    parser.add_argument("--console-user", default=CONSOLE_USER)
    parser.add_argument("--console-password-file", help="add the console account")
    parser.add_argument("--loadgen-password-file",
                        help=f"add the TEST-ONLY load generator account ({LOADGEN_USER}); "
                             "never on a production broker")
    parser.add_argument("--credentials-csv", metavar="PATH",
                        help="also write device_id,region,subject_id,username,password for "
                             "provisioning (mode 0600; '-' for standard output)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"PBKDF2 iterations (default {DEFAULT_ITERATIONS}, as mosquitto_passwd)")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    try:
        secret = read_secret(args.secret_file)
        try:
            data = orjson.loads(Path(args.subjects).read_bytes())
        except OSError as exc:
            raise PasswordsError(f"{args.subjects}: cannot read: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise PasswordsError(f"{args.subjects}: not valid JSON: {exc}") from None
        devices = devices_of_subjects(data, args.subjects)
        services: dict[str, str] = {}
        for user, pw_file, what in ((args.engine_user, args.engine_password_file, "engine"),
                                    (args.console_user, args.console_password_file, "console"),
                                    (LOADGEN_USER, args.loadgen_password_file, "load generator")):
            if pw_file:
                if any(user == d for d, _, _ in devices):
                    raise PasswordsError(f"{what} user {user!r} is also a device id")
                services[user] = read_password_file(pw_file, what)
        text = build_password_file(devices, secret, services, args.iterations)
    except PasswordsError as exc:
        print(f"emfence mqtt-passwords: {exc}", file=sys.stderr)
        return 1
    if args.output:
        _write_private(Path(args.output), text)
        print(f"wrote {len(devices)} devices and {len(services)} service accounts to "
              f"{args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
