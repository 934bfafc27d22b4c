"""The operations endpoints of a standby worker (:mod:`emfence.run.lease`): the same
paths as a working one's (:mod:`emfence.run.ops_http`) on its ``--http`` and
``--metrics-http`` addresses, answering for a process that waits for its group's lease:
``/healthz`` 200, ``/readyz`` 503 naming the holder, ``/metrics`` the lease gauges."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emfence.run.ops_http import HEALTHZ, METRICS, READYZ, parse_listen

log = logging.getLogger("emfence.run")


def standby_app(lease) -> Starlette:
    """``/healthz``, ``/readyz`` and ``/metrics`` of a standby waiting on ``lease``."""
    name = lease.group

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "name": name, "reasons": []})

    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "not ready", "name": name,
                             "reasons": [lease.standby_reason()]}, status_code=503)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StandbyCollector(lease))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route(HEALTHZ, healthz, methods=["GET"]),
                             Route(READYZ, readyz, methods=["GET"]),
                             Route(METRICS, metrics, methods=["GET"])])


class _StandbyCollector:
    def __init__(self, lease):
        self.lease = lease

    def collect(self):
        seen = self.lease.seen
        for metric, doc, value in (
                ("emfence_run_ready", "1 while /readyz answers 200", 0),
                ("emfence_run_lease_held", "1 while this worker holds its group's lease", 0),
                ("emfence_run_lease_epoch", "the epoch of the group's lease as last read",
                 seen.epoch if seen is not None else 0)):
            g = GaugeMetricFamily(metric, doc, labels=["worker"])
            g.add_metric([self.lease.group], value)
            yield g


async def serve_standby(lease, where: str) -> None:
    """Serve the standby's endpoints on ``where`` (``HOST:PORT`` or ``PORT``) until
    cancelled; an address that cannot be served is logged, and the wait goes on."""
    from console.app import serve

    host, port = parse_listen(where)
    try:
        await serve(standby_app(lease), host, port, ready=lambda p: log.info(
            "standby: /healthz, /readyz and /metrics on %s:%d", host, p))
    except OSError as exc:
        log.error("standby: cannot serve %s:%d: %s", host, port, exc)
