"""The Jinja2 environment of the review page (templates ship in the package) and ``render``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``name`` filled with ``context``; every template also gets ``request`` and ``config``."""
    return TEMPLATES.TemplateResponse(request, name, {"config": request.app.state.config, **context},
                                      status_code=status_code)
