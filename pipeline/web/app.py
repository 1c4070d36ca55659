"""The review page's app: ``create_app(config)`` gathers the routes of the page modules in ``PAGES``, behind the
session and the guard of ``security`` (access token, CSRF on every POST)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from jinja2 import pass_context
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Config
from ..store import Store
from . import security
from .templating import TEMPLATES

# The modules that add pages, each with ``routes() -> list[BaseRoute]``: the one list to add a page to.
PAGES: list[str] = ["pipeline.web.night", "pipeline.web.failures", "pipeline.web.job", "pipeline.web.files",
                   "pipeline.web.actions"]


@pass_context
def _csrf_token(context: Any, request: Request | None = None) -> str:
    """``{{ csrf_token() }}`` in a template (``csrf_token(request)`` works too)."""
    return security.csrf_token(request or context["request"])


TEMPLATES.env.globals["csrf_token"] = _csrf_token


@pass_context
def _problems_now(context: Any) -> list[str]:
    """``{{ problems_now() }}``: the running daemon's problem processes, one line each, for the banner on every
    page (``listing.problem_lines``, as ``assetd jobs`` says them; none while no daemon runs)."""
    from ..listing import problem_lines

    state = context["request"].app.state
    return problem_lines(state.store, state.config.database)


TEMPLATES.env.globals["problems_now"] = _problems_now


def metrics(request: Request) -> Response:
    """Prometheus' scrape: built from the store per request (``pipeline.metrics``)."""
    from ..metrics import exposition

    body, content_type = exposition(request.app.state.config, request.app.state.store,
                                    request.headers.get("accept"))
    return Response(body, media_type=content_type)


def create_app(config: Config, store: Store | None = None) -> Starlette:
    """The review app over ``config``'s store (``store``: one already open, e.g. the daemon's)."""
    token = security.access_token(config)
    routes = security.login_routes() + [Route("/metrics", metrics)]
    routes += [r for module in PAGES for r in importlib.import_module(module).routes()]
    routes.append(Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"))
    limiter = security.LoginLimiter()
    app = Starlette(routes=routes, middleware=[
        Middleware(SessionMiddleware, secret_key=security.session_secret(token), session_cookie="assetd_session",
                   same_site="lax", max_age=14 * 24 * 3600),
        Middleware(security.Guard, token=token, limiter=limiter),
    ])
    app.state.config = config
    app.state.store = store or Store(config.database, config.quarantine_after_crashes)
    app.state.token = token
    app.state.limiter = limiter
    return app
