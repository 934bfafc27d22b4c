"""The configuration's error, and secrets read from files (never from the command line)."""

from __future__ import annotations

from pathlib import Path

from contract.errors import EmfenceError


class ConfigError(EmfenceError, ValueError):
    """A configuration file or value is wrong; ``key`` is the dotted key, ``source`` the file."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        where = " ".join(p for p in (source and f"{source}:", key and f"[{key}]") if p)
        super().__init__(f"{where} {message}".strip())


def read_secret(path: str, key: str, source: str | None = None) -> bytes:
    """The secret in the file ``path`` (its content stripped of surrounding whitespace);
    ConfigError naming ``key`` when it cannot be read or is empty."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}", key=key,
                          source=source) from exc
    if not secret:
        raise ConfigError(f"{path!r} is empty", key=key, source=source)
    return secret
