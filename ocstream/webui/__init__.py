"""The built-in dashboard: plain HTML, JavaScript and CSS served by the worker (no build step,
no CDN, so it works offline).

``register_webui(app.web.web_app)`` adds ``GET /dashboard/`` (``/dashboard`` redirects there) and
the assets under ``/dashboard/static/``. The page reads the worker's own endpoints with relative
URLs (``../networks``, ``../subs``, ``../xcm/pending/``, ``../topology.json``) and opens an
ephemeral subscription on ``../ws/subs`` for its live feed, so it also works behind a reverse
proxy that mounts the worker under a path. What it shows is described in ``docs/dashboard.md``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")


def register_webui(
    target: web.Application | web.UrlDispatcher, *, path: str = "/dashboard"
) -> None:
    """Add the dashboard's routes to an aiohttp application or router.

    Call it before the server is set up: aiohttp freezes the router then. For faust, that is
    right after building the app (``app.web.web_app``).
    """
    router = target.router if isinstance(target, web.Application) else target
    base = path.rstrip("/")
    index = STATIC_DIR / "index.html"

    async def redirect(request: web.Request) -> web.StreamResponse:
        location = f"{base}/"
        if request.query_string:
            location += f"?{request.query_string}"
        raise web.HTTPPermanentRedirect(location)

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    router.add_get(base, redirect, name="dashboard-redirect")
    router.add_get(f"{base}/", page, name="dashboard")
    router.add_static(f"{base}/static/", STATIC_DIR, name="dashboard-static")


__all__ = ["STATIC_DIR", "register_webui"]
