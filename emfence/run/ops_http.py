"""Operations endpoints of `emfence run`: ``GET /healthz``, ``GET /readyz`` and
``GET /metrics`` (Prometheus text format, ``prometheus-client``), on the ``--http``
console port and on a bare ``--metrics-http HOST:PORT`` for workers without a console.

- ``/healthz``: 200 while the process's loops run; 503 when the receive loop or the
  processor has ended, or the processor has been busy with one item for longer than
  :data:`PROCESSOR_STALL_S` (a stall). A standby is healthy.
- ``/readyz``: 200 only while every readiness condition holds (connected to a broker,
  the backlog drained, every subscription granted, not stopping, and whatever
  :attr:`Ops.readiness` gains later, e.g. holding the worker group's lease); 503
  otherwise. Both answer JSON naming why: ``{"status": ..., "reasons": [...]}``.
- ``/metrics``: the service's counters (those of the retained health document) as
  Prometheus metrics, read at each scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("emfence.run")

# The processor busy with one item (a batch, a sweep, a checkpoint, a reload) for longer
# than this is stalled (/healthz 503), s. A national batch takes well under a second;
# a checkpoint of the whole engine a few seconds.
PROCESSOR_STALL_S = 60.0
# The paths are a contract (monitoring and service managers use them): keep them exact.
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"


class Ops:
    """The endpoints' view of one :class:`emfence.run.service.Service`.

    ``readiness``: conditions ``() -> reason or None``, all checked at each ``/readyz``;
    another part (the lease of a worker group) appends its own, e.g.
    ``ops.readiness.append(lambda: None if lease.held else "standby: lease held by ...")``.
    """

    def __init__(self, service, clock: Callable[[], float] = time.monotonic):
        self.service = service
        self.clock = clock
        self.readiness: list[Callable[[], str | None]] = [
            self._not_stopping, self._connected, self._drained, self._not_degraded]

    # ----- liveness and readiness ----------------------------------------------------

    def liveness(self) -> list[str]:
        """Why the process is not healthy (empty: healthy)."""
        s = self.service
        reasons = []
        for name in ("mqtt-connection", "processor"):
            task = s.tasks.get(name)
            if task is not None and task.done() and not s.stopping:
                reasons.append(f"the {name} loop has ended")
        busy = s.processor_busy_since
        if busy is not None and self.clock() - busy > PROCESSOR_STALL_S:
            reasons.append(f"the processor has been busy with one item for "
                           f"{self.clock() - busy:.0f} s (stalled)")
        return reasons

    def unready(self) -> list[str]:
        """Why the worker is not ready (empty: ready)."""
        reasons = self.liveness()
        for condition in self.readiness:
            reason = condition()
            if reason:
                reasons.append(reason)
        return reasons

    def _not_stopping(self) -> str | None:
        return "stopping" if self.service.stopping else None

    def _connected(self) -> str | None:
        if self.service.receiver.connected.is_set():
            return None
        return "not connected to a broker"

    def _drained(self) -> str | None:
        if self.service.hold.drained:
            return None
        return "the broker's backlog is not drained yet"

    def _not_degraded(self) -> str | None:
        degraded = self.service.receiver.degraded
        return f"degraded: {degraded}" if degraded else None

    # ----- HTTP ----------------------------------------------------------------------

    async def healthz(self, request: Request) -> JSONResponse:
        reasons = self.liveness()
        return JSONResponse({"status": "unhealthy" if reasons else "ok",
                             "name": self.service.opts.name, "reasons": reasons},
                            status_code=503 if reasons else 200)

    async def readyz(self, request: Request) -> JSONResponse:
        reasons = self.unready()
        return JSONResponse({"status": "not ready" if reasons else "ready",
                             "name": self.service.opts.name, "reasons": reasons},
                            status_code=503 if reasons else 200)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        return [Route(HEALTHZ, self.healthz, methods=["GET"]),
                Route(READYZ, self.readyz, methods=["GET"]),
                Route(METRICS, self.metrics, methods=["GET"])]

    @property
    def registry(self) -> CollectorRegistry:
        registry = getattr(self, "_registry", None)
        if registry is None:
            registry = self._registry = CollectorRegistry(auto_describe=False)
            registry.register(_ServiceCollector(self))
        return registry

    def add_to(self, app: Starlette) -> None:
        """Put the endpoints in front of ``app``'s own routes (the console's)."""
        app.router.routes[:0] = self.routes()

    def app(self) -> Starlette:
        """A bare app with the endpoints only (``--metrics-http``)."""
        return Starlette(routes=self.routes())


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).lower()


class _ServiceCollector:
    """The service's counters as Prometheus metrics, read at each scrape."""

    def __init__(self, ops: Ops):
        self.ops = ops

    def collect(self):
        s = self.ops.service
        name = s.opts.name
        groups = (("emfence_run", "counter of emfence run (health document 'counters')",
                   s.counters),
                  ("emfence_engine", "counter of the rule engine (health document 'engine')",
                   s.engine.counters),
                  ("emfence_outbox", "counter of the alarm outbox publisher",
                   s.outbox.counters))
        for prefix, doc, counters in groups:
            for key, value in sorted(dict(counters).items()):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                c = CounterMetricFamily(f"{prefix}_{_metric_name(key)}", f"{doc}: {key}",
                                        labels=["worker"])
                c.add_metric([name], value)
                yield c
        rejected = CounterMetricFamily("emfence_run_rejections", "messages rejected (dead "
                                       "letters), by reason", labels=["worker", "reason"])
        for reason, value in sorted(s.rejects.items()):
            rejected.add_metric([name, reason], value)
        yield rejected
        gauges = {
            "emfence_run_devices": ("devices registered", len(s.registry.device_ids)),
            "emfence_run_unacknowledged_messages": ("messages processed, not yet acknowledged",
                                                    s.acks.since_checkpoint),
            "emfence_run_track_queue_rows": ("track rows waiting for the store",
                                             len(s.tracks)),
            "emfence_run_deadletter_queue_messages": ("dead letters waiting to be published",
                                                      s.receiver.deadletters.qsize()),
            "emfence_run_connected": ("1 while connected to a broker",
                                      int(s.receiver.connected.is_set())),
            "emfence_run_backlog_drained": ("1 once the broker's backlog is drained",
                                            int(bool(s.hold.drained))),
            "emfence_run_degraded": ("1 while a subscription is refused",
                                     int(s.receiver.degraded is not None)),
            "emfence_run_ready": ("1 while /readyz answers 200", int(not self.ops.unready())),
            "emfence_run_outages": ("outages of the store or checkpoint file now",
                                    len(s.outages.health())),
        }
        lease = getattr(s, "lease", None)  # a worker group's (emfence.run.lease)
        if lease is not None:
            gauges["emfence_run_lease_held"] = ("1 while this worker holds its group's lease",
                                                int(lease.held))
            gauges["emfence_run_lease_epoch"] = ("the epoch of the group's lease held",
                                                 lease.epoch)
        for metric, (doc, value) in gauges.items():
            g = GaugeMetricFamily(metric, doc, labels=["worker"])
            g.add_metric([name], value)
            yield g
        if s.watchdog is not None:
            g = GaugeMetricFamily("emfence_run_watchdog_idle_seconds", "seconds since the "
                                  "watchdog was last fed", labels=["worker"])
            g.add_metric([name], s.watchdog.idle_s())
            yield g


async def serve_ops(ops: Ops, where: str, failed: Callable[[], None]) -> None:
    """Serve the bare endpoints on ``where`` (``HOST:PORT`` or ``PORT``) until cancelled;
    ``failed()`` when it cannot listen (logged in one line)."""
    from console.app import serve

    host, port = parse_listen(where)
    try:
        await serve(ops.app(), host, port, ready=lambda p: log.info(
            "operations endpoints (/healthz, /readyz, /metrics) on %s:%d", host, p))
    except OSError as exc:
        log.error("--metrics-http %s:%d: cannot serve: %s", host, port, exc)
        failed()


def parse_listen(where: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (host 127.0.0.1) -> ``(host, port)``; ValueError naming
    the option otherwise."""
    host, _, port = where.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-http {where!r}: expected HOST:PORT or PORT")
    return host.strip("[]") or "127.0.0.1", int(port)
