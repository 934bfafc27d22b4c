"""The embedded console (``--http HOST:PORT``): the console's own app and ``serve``,
in the engine's event loop; the engine owns the signals and stops it by cancelling."""

from __future__ import annotations

import logging

log = logging.getLogger("emfence.run")


class ConsoleHttp:
    """The console app over the engine's store, told about reloads."""

    def __init__(self, http: str, *, store, config, zones, registry):
        host, _, port = http.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.app = None
        try:
            from console.app import create_app
        except ImportError as exc:
            log.error("--http: the console is not available (%s); running without it", exc)
            return
        self.app = create_app(store=store, config=config, zones=zones, registry=registry,
                              secure_cookies=host not in ("127.0.0.1", "localhost", "::1"))

    def set_model(self, zones, registry) -> None:
        """After a reload: the map draws the new zones."""
        if self.app is not None:
            self.app.state.console.set_model(zones, registry)

    async def run(self, failed) -> None:
        """Serve until cancelled (open live feeds are closed first); ``failed()`` when it
        cannot listen (the address taken: a mistake to fix, logged in one line)."""
        from console.app import serve

        try:
            await serve(self.app, self.host, self.port,
                        ready=lambda p: log.info("console listening on %s:%d", self.host, p))
        except OSError as exc:
            log.error("--http %s:%d: cannot serve the console: %s", self.host, self.port, exc)
            failed()
