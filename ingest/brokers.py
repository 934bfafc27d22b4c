"""Where the engine's broker is: a broker URL and its credentials as given on the command
line (``--broker`` repeatable, ``--username``, ``--password-file``, TLS files), and the
list of brokers a process goes round when one is lost (docs/operations.md, "Several
brokers"). :mod:`ingest.mqtt` connects to them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from contract.errors import EmfenceError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerConfigError(EmfenceError, ValueError):
    """A broker URL, credential or TLS option is wrong; the message names the option."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: ``host``/``port``, TLS files, login."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive_s: int = 30

    @classmethod
    def from_options(cls, url: str, *, username: str | None = None,
                     password_file: str | None = None, tls_ca: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None) -> BrokerSettings:
        """Build from ``mqtt://host:port`` / ``mqtts://host:port`` and the CLI options.

        A password is read from ``password_file`` (first line), never taken on the
        command line where ``ps`` would show it. TLS is on for ``mqtts://`` or when
        ``tls_ca`` is given; a client certificate needs both ``tls_cert`` and ``tls_key``.
        """
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise BrokerConfigError(f"--broker {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise BrokerConfigError(f"--broker {url!r}: no host")
        if parts.path not in ("", "/") or parts.query:
            raise BrokerConfigError(f"--broker {url!r}: only mqtt[s]://host[:port] is accepted")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise BrokerConfigError(f"--broker {url!r}: {exc}") from None
        if parts.password is not None:
            raise BrokerConfigError("--broker: put the password in --password-file, not the URL")
        user = username or (unquote(parts.username) if parts.username else None)
        password = None
        if password_file:
            try:
                text = Path(password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise BrokerConfigError(
                    f"--password-file {password_file}: {exc.strerror}") from None
            password = text.splitlines()[0].strip() if text.strip() else ""
            if not password:
                raise BrokerConfigError(f"--password-file {password_file}: empty")
            if user is None:
                raise BrokerConfigError("--password-file needs --username")
        if bool(tls_cert) != bool(tls_key):
            raise BrokerConfigError("--tls-cert and --tls-key go together")
        for opt, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if path and not Path(path).is_file():
                raise BrokerConfigError(f"{opt} {path}: no such file")
        tls = parts.scheme == "mqtts" or bool(tls_ca) or bool(tls_cert)
        return cls(parts.hostname, port, tls, user, password, tls_ca, tls_cert, tls_key)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def __repr__(self) -> str:  # never print the password
        return (f"BrokerSettings(host={self.host!r}, port={self.port}, tls={self.tls}, "
                f"username={self.username!r})")


DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def add_broker_arguments(parser, *, username_help: str) -> None:
    """The broker options of every command that connects as a service account:
    ``--broker`` (repeatable), ``--username``, ``--password-file`` and the TLS files, read
    back by :func:`brokers_from_args`."""
    parser.add_argument("--broker", action="append", metavar="URL",
                        help="mqtt://host:port or mqtts://host:port; give it several times "
                             "for the nodes of a clustered broker: the first that answers is "
                             f"used, the next on loss (default {DEFAULT_BROKER})")
    parser.add_argument("--username", help=username_help)
    parser.add_argument("--password-file",
                        help="file whose first line is the broker password")
    parser.add_argument("--tls-ca",
                        help="CA certificate file to verify the broker (turns on TLS)")
    parser.add_argument("--tls-cert", help="client certificate file (with --tls-key)")
    parser.add_argument("--tls-key", help="client private key file")


def broker_urls(given: str | list[str] | None) -> list[str]:
    """The ``--broker`` URLs in the order given (``None``: the default broker). A URL with
    a comma is refused with the way to give a list: ``--broker`` once per broker."""
    urls = [given] if isinstance(given, str) else list(given or [DEFAULT_BROKER])
    for url in urls:
        if "," in url:
            raise BrokerConfigError(f"--broker {url!r}: one URL per --broker; for several "
                                    "brokers give --broker once for each")
    return urls


def brokers_from_args(args) -> list[BrokerSettings]:
    """One :class:`BrokerSettings` per ``--broker`` (in order), from the options of
    :func:`add_broker_arguments` (raises :class:`BrokerConfigError` naming the option)."""
    return [BrokerSettings.from_options(url, username=args.username,
                                        password_file=args.password_file, tls_ca=args.tls_ca,
                                        tls_cert=args.tls_cert, tls_key=args.tls_key)
            for url in broker_urls(args.broker)]


def broker_from_args(args) -> BrokerSettings:
    """The first broker of :func:`brokers_from_args` (a command that makes one short
    connection)."""
    return brokers_from_args(args)[0]


class BrokerList:
    """The brokers to connect to, in order: the first that answers is used; on a failed
    attempt or a lost session the next one is tried (round robin).

    ``failed()`` says whether a whole round has now failed since the last working session
    (or since the last round): the caller then waits its backoff delay; between the
    brokers of one round it does not wait, so a lost node is replaced at once by the next.
    With a single broker every failure is a whole round: the backoff as before. The
    items are the engine's :class:`BrokerSettings`, or the simulator's (host, port).
    """

    def __init__(self, brokers: list[Any]):
        if not brokers:
            raise ValueError("BrokerList needs at least one broker")
        self.brokers = list(brokers)
        self.index = 0
        self._failed_in_round = 0

    @property
    def current(self) -> Any:
        return self.brokers[self.index]

    def __len__(self) -> int:
        return len(self.brokers)

    def failed(self) -> bool:
        """The current broker failed (or its session was lost): move to the next; True
        when every broker of the list has failed in this round."""
        self.index = (self.index + 1) % len(self.brokers)
        self._failed_in_round += 1
        if self._failed_in_round >= len(self.brokers):
            self._failed_in_round = 0
            return True
        return False

    def worked(self) -> None:
        """A session began with the current broker."""
        self._failed_in_round = 0
