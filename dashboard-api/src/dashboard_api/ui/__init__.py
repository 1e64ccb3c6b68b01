"""The web dashboard: a static page under /ui that reads this same API from the browser.

Plain HTML, CSS and JavaScript with uPlot vendored beside them (static/vendor,
MIT licence kept): no build step, nothing fetched from the internet, and the
package data is the whole front end. The page only calls public endpoints, so
it is no more privileged than any other API client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from telemetry_common.infra.settings import DashboardSettings

STATIC = Path(__file__).parent / "static"
UI_PATH = "/ui"

# Same-origin only: the page cannot load or send anything elsewhere, a CDN
# link included. uPlot sets inline styles on its elements, hence style-src.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'"
)


class _UiFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Revalidated on every load (ETag): a new release shows at once.
        response.headers["Cache-Control"] = "no-cache"
        return response


def wants_page(request: Request) -> bool:
    """A browser navigating (Accept lists text/html), not an API client (*/* or JSON)."""
    return "text/html" in request.headers.get("accept", "")


def redirect_to_ui() -> RedirectResponse:
    # 307, not 308: a later version may serve something else at / to browsers.
    return RedirectResponse(f"{UI_PATH}/", status_code=307)


def install_ui(app: FastAPI, settings: DashboardSettings) -> None:
    """Serve the page at /ui/ and what it needs to know about this deployment."""
    resolutions = sorted(settings.resolutions, key=settings.resolutions.__getitem__)

    @app.get(f"{UI_PATH}/config.json", include_in_schema=False)
    async def ui_config() -> dict[str, Any]:
        return {
            "resolutions": resolutions,
            "api_keys_required": settings.api_keys_required,
            "stats_refresh_s": settings.stats_refresh_s,
        }

    app.mount(UI_PATH, _UiFiles(directory=STATIC, html=True), name="ui")
