"""The review page's app: ``create_app(config)`` gathers the routes of the page modules in ``PAGES``."""
from __future__ import annotations

import importlib
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from ..config import Config
from ..store import Store

# The modules that add pages, each with ``routes() -> list[BaseRoute]``: the one list to add a page to.
PAGES: list[str] = ["pipeline.web.job", "pipeline.web.files"]


def create_app(config: Config, store: Store | None = None) -> Starlette:
    """The review app over ``config``'s store (``store``: one already open, e.g. the daemon's)."""
    routes = [r for module in PAGES for r in importlib.import_module(module).routes()]
    routes.append(Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"))
    app = Starlette(routes=routes)
    app.state.config = config
    app.state.store = store or Store(config.database, config.quarantine_after_crashes)
    return app
