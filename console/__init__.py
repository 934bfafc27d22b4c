"""The command-centre console: web page, JSON API, live feed and ``emfence user``.

``create_app(store=..., config=...)`` builds the Starlette app; ``serve(app, host, port)``
runs it with uvicorn inside the caller's event loop. See ``docs/console-api.md``.
"""

from console.app import create_app, serve

__all__ = ["create_app", "serve"]
