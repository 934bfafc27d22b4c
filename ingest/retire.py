"""`emfence retire-session`: drop an engine worker's persistent session at the broker.

Every worker name keeps a persistent session (client id = its login, ``emfence-NAME``)
that queues every fix of its regions while the worker is away, for as long as the
broker's ``persistent_client_expiration`` (7 days in the shipped config). A worker
that is retired for good (renamed, merged into another) should not leave location
data and broker memory behind: this connects once with the worker's client id and a
clean session, which makes the broker discard the old session and its queue, and
disconnects. Stop the worker first: a running worker would be disconnected, reconnect
and start a new, empty session.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiomqtt

from ingest.brokers import BrokerConfigError, BrokerSettings, add_broker_arguments, broker_from_args
from ingest.mqtt import EXIT_LOGIN_REFUSED, BrokerConnectError, connect_error, fail_on_early_close
from ingest.passwords import engine_client_id, worker_name_problem


async def retire(settings: BrokerSettings, client_id: str) -> None:
    """Connect as ``client_id`` with a clean session and disconnect (MQTT 3.1.1: the
    broker discards the stored session, its subscriptions and its queued messages).
    A failed connection raises :class:`ingest.mqtt.BrokerConnectError`."""
    client = aiomqtt.Client(
        settings.host, settings.port, username=settings.username, password=settings.password,
        identifier=client_id, clean_session=True, protocol=aiomqtt.ProtocolVersion.V311,
        tls_context=settings.ssl_context(), timeout=30.0)
    fail_on_early_close(client)
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise connect_error(exc, host=settings.host, port=settings.port,
                            username=settings.username, tls=settings.tls, fixes={
                                "refused": "log in as the worker's own account emfence-NAME "
                                           "with the --password-file it ran with"}) from None
    await client.__aexit__(None, None, None)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="emfence retire-session",
        description="Discard a retired engine worker's persistent session and the fixes "
                    "queued in it (stop the worker first). docs/operations.md, section "
                    "'Retiring a worker'.")
    p.add_argument("--name", required=True, help="the worker's name (emfence run --name)")
    add_broker_arguments(p, username_help="the worker's own account, emfence-NAME (the "
                         "broker binds the session to the login)")
    args = p.parse_args(argv)
    try:
        problem = worker_name_problem(args.name)
        if problem:
            raise BrokerConfigError(f"--name {problem}")
        settings = broker_from_args(args)
    except BrokerConfigError as exc:
        print(f"emfence retire-session: {exc}", file=sys.stderr)
        return 1
    client_id = engine_client_id(args.name, settings.username)
    try:
        asyncio.run(retire(settings, client_id))
    except BrokerConnectError as exc:
        print(f"emfence retire-session: {exc}", file=sys.stderr)
        return EXIT_LOGIN_REFUSED if exc.fatal else 1
    except aiomqtt.MqttError as exc:  # the disconnect itself failed
        print(f"emfence retire-session: {settings.host}:{settings.port} as "
              f"{settings.username or 'anonymous'}: {exc}", file=sys.stderr)
        return 1
    print(f"retired session {client_id} on {settings.host}:{settings.port}: its queued "
          "messages are discarded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
