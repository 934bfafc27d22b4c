"""Write deploy/nats/accounts.conf: the NATS users and permissions of emfence, the
equivalent of deploy/mosquitto/emfence.acl.

nats-server 2.9 has no per-user templates for users of a config file (the `{{name()}}`
style templates exist only for JWT scoped signing keys), so every device gets a user
entry of its own, with publish rights on its own two subjects only (MQTT topic `a/b`
is NATS subject `a.b`)::

    python deploy/nats/nats_users.py SUBJECTS --secret-file SECRET \\
        --engine worker-1=/etc/emfence/worker-1.pw --console /etc/emfence/console.pw \\
        -o deploy/nats/accounts.conf

Device passwords are derived from the site secret exactly as `emfence mqtt-passwords`
derives them (ingest/passwords.py), so the bracelets need nothing new. The file holds
the passwords in clear (nats-server reads bcrypt hashes too, but this script has no
bcrypt): it is written mode 0600; keep it so on every node. Run it again, copy it to
the three nodes and reload them (`nats-server --signal reload`) when devices change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ingest.passwords import (
    CONSOLE_USER,
    LOADGEN_USER,
    PasswordsError,
    _engine_option,
    _read_devices,
    device_password,
    engine_account,
    read_password_file,
    read_secret,
)

ACCOUNT = "EMFENCE"
# The QoS 1 deliveries of an MQTT subscription come on an internal subject of the
# session: every account that subscribes needs it.
MQTT_INBOX = "$MQTT.sub.>"
ENGINE = {"publish": ["emfence.v1.*.alarms.*", "emfence.v1.*.deadletter",
                      "emfence.v1.engine.*.health", "emfence.v1.engine.*.drain",
                      "emfence.v1.*.*.cmd"],
          "subscribe": ["emfence.v1.*.*.fix", "emfence.v1.*.*.status", "emfence.v1.*.*.reply",
                        "emfence.v1.engine.*.health", "emfence.v1.engine.*.drain", MQTT_INBOX]}
CONSOLE = {"publish": [],
           "subscribe": ["emfence.v1.*.alarms.*", "emfence.v1.*.deadletter",
                         "emfence.v1.engine.*.health", MQTT_INBOX]}
# TEST ONLY (never on a production broker): the simulator publishes for every device.
LOADGEN = {"publish": ["emfence.v1.*.*.fix", "emfence.v1.*.*.status", "emfence.v1.*.*.reply"],
           "subscribe": ["emfence.v1.*.alarms.*", "emfence.v1.*.*.cmd", MQTT_INBOX]}


def engine_rights(account: str) -> dict[str, list[str]]:
    """ENGINE, and the drain markers the worker publishes after each connection into
    its device subscriptions, under its own account in place of a device id
    (emfence/run/drain.py; mosquitto's `pattern write emfence/v1/+/%u/fix` allows them)."""
    markers = [f"emfence.v1.*.{account}.{kind}" for kind in ("fix", "status")]
    return {"publish": ENGINE["publish"] + markers, "subscribe": ENGINE["subscribe"]}


def device_rights(device_id: str) -> dict[str, list[str]]:
    """Its own fixes, statuses and command replies, in any region (the engine
    dead-letters a wrong one); it reads its own commands only (the downlink)."""
    return {"publish": [f"emfence.v1.*.{device_id}.fix", f"emfence.v1.*.{device_id}.status",
                        f"emfence.v1.*.{device_id}.reply"],
            "subscribe": [f"emfence.v1.*.{device_id}.cmd", MQTT_INBOX]}


def user_entry(name: str, password: str, rights: dict[str, list[str]]) -> str:
    perms = {kind: {"allow": allow} if allow else {"deny": [">"]}
             for kind, allow in rights.items()}
    return (f"      {{user: {json.dumps(name)}, password: {json.dumps(password)}, "
            f"permissions: {json.dumps(perms)}}}")


def build(args: argparse.Namespace) -> str:
    secret = read_secret(args.secret_file)
    entries = [user_entry(engine_account(name), read_password_file(pw, "engine"),
                          engine_rights(engine_account(name)))
               for name, pw in args.engine]
    for user, pw_file, rights in ((CONSOLE_USER, args.console, CONSOLE),
                                  (LOADGEN_USER, args.loadgen, LOADGEN)):
        if pw_file:
            entries.append(user_entry(user, read_password_file(pw_file, user), rights))
    entries += [user_entry(did, device_password(secret, did), device_rights(did))
                for did, _region, _sid in _read_devices(args.subjects)]
    return ("# Written by deploy/nats/nats_users.py: edit the rules there, not here.\n"
            f"accounts {{\n  {ACCOUNT} {{\n    jetstream: enabled\n    users: [\n"
            + "\n".join(entries) + "\n    ]\n  }\n}\n")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nats_users.py", description=__doc__.split("\n\n")[0])
    p.add_argument("subjects", help="the subjects file (JSON or CSV) the engine reads")
    p.add_argument("--secret-file", required=True, help="the site secret of the devices")
    p.add_argument("--engine", action="append", type=_engine_option, default=[],
                   metavar="NAME=PASSWORD_FILE", help="an engine worker (repeatable)")
    p.add_argument("--console", help="password file of the console account")
    p.add_argument("--loadgen", help="TEST ONLY: password file of the load generator")
    p.add_argument("-o", "--output", required=True, help="the accounts.conf to write")
    args = p.parse_args(argv)
    try:
        text = build(args)
    except PasswordsError as exc:
        print(f"nats_users.py: {exc}", file=sys.stderr)
        return 1
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
