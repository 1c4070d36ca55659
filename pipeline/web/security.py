"""Who may use the review page, and that a state change comes from the page itself.

- **Access.** With ``review.token`` (or ``token_file``) every route but the login form and the static files needs
  a session (the login form takes the token as its password and sets a signed session cookie) or
  ``Authorization: Bearer TOKEN`` (scripts, Prometheus). Without a token the page is open: ``assetd serve`` and
  ``assetd run`` refuse to listen on anything but loopback then (``exposure_problem``).
- **Failed logins** (a wrong password or bearer token) are limited per client: ``LOGIN_ATTEMPTS`` a minute, then
  429 with Retry-After: the login form again, saying how long to wait, for a person; one plain line for a script's
  bearer token.
- **DNS rebinding.** Without a token the page answers only requests addressed to this machine by a loopback name
  (``localhost``, 127.x, ``[::1]``, its own host name): another site whose name was made to point at 127.0.0.1
  would otherwise be same-origin with the page and could read it and post its forms.
- **CSRF.** Every POST (with or without a token: a page on loopback is still reachable by other sites' forms)
  carries the session's CSRF token, in the field ``csrf`` of a urlencoded form or the header ``X-CSRF-Token`` (fetch,
  and any other body: a multipart form must send the header); a request
  authenticated by the bearer token needs none (a browser never sends that header on its own). GET never changes
  anything.

Templates get ``csrf_token()`` (a Jinja global) for their forms: ``<input type="hidden" name="csrf"
value="{{ csrf_token() }}">``.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import socket
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from ..errors import ConfigError
from .server import is_loopback, parse_listen

LOGIN_ATTEMPTS = 5  # failed logins per client ...
LOGIN_WINDOW = 60.0  # ... in this many seconds; then 429 until the oldest is this old
OPEN_PATHS = ("/login", "/static/")  # reachable without a session (the login form and its stylesheet)
CSRF_FIELD, CSRF_HEADER = "csrf", "x-csrf-token"
MAX_FORM_BYTES = 1 << 20  # a POST body read to find its CSRF field: the page's forms are small


def access_token(config: Config) -> str | None:
    """The configured token (``token``, else the first line of ``token_file``), or None: the page is open."""
    review = config.review
    if review.token:
        return str(review.token)
    if review.token_file:
        path = config.resolve(review.token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"review.token_file: cannot read {path} ({exc.strerror or exc})") from None
        if not token:
            raise ConfigError(f"review.token_file: {path} is empty; write the access token into it")
        return token
    return None


def exposure_problem(config: Config, listen: str) -> str | None:
    """Why the page must not listen on ``listen``: anything but loopback without an access token."""
    host, _ = parse_listen(listen)
    if is_loopback(host) or access_token(config):
        return None
    return (f"review page: listening on {listen} (not loopback) needs an access token; set review.token or "
            f"review.token_file in {config.source}, or listen on 127.0.0.1")


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use): the hidden field of every form, or X-CSRF-Token for fetch."""
    session = request.scope.get("session")
    if session is None:
        return ""
    if not session.get(CSRF_FIELD):
        session[CSRF_FIELD] = secrets.token_urlsafe(24)
    return session[CSRF_FIELD]


def session_secret(token: str | None) -> str:
    """The key that signs session cookies: derived from the token (sessions survive a restart and are shared by
    `assetd serve` and `assetd run`; a new token ends them all), or random per process when there is none."""
    if token is None:
        return secrets.token_urlsafe(32)
    return hmac.new(token.encode(), b"assetd review session", hashlib.sha256).hexdigest()


class LoginLimiter:
    """Failed logins per client address in the last ``window`` seconds."""

    def __init__(self, attempts: int = LOGIN_ATTEMPTS, window: float = LOGIN_WINDOW):
        self.attempts, self.window = attempts, window
        self._failed: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failed = self._failed.setdefault(client, deque())
        while failed and failed[0] <= now - self.window:
            failed.popleft()
        return failed

    def wait(self, client: str) -> float:
        """Seconds this client must wait before it may try again (0: it may)."""
        now = time.monotonic()
        with self._lock:
            failed = self._recent(client, now)
            return failed[0] + self.window - now if len(failed) >= self.attempts else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failed) > 10_000:  # forget clients with nothing recent (no unbounded growth)
                for key in [k for k, v in self._failed.items() if not self._recent(k, now)]:
                    del self._failed[key]


def local_names() -> set[str]:
    """Host names a browser on this machine may use for a page listening on loopback only."""
    names = {"localhost", "testserver"}  # testserver: starlette's TestClient
    with contextlib.suppress(OSError):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names


def host_of(scope: Scope) -> str:
    """The request's Host header without its port (and IPv6 brackets), lower case."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[1:host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _seconds(wait: float) -> int:
    return max(1, int(wait + 0.999))


def too_many_text(wait: float) -> str:
    return f"too many failed logins from this address; try again in {_seconds(wait)} s"


def too_many(wait: float) -> Response:
    """The 429 for a script (a bearer token): one plain line and Retry-After."""
    return PlainTextResponse(too_many_text(wait), status_code=429, headers={"Retry-After": str(_seconds(wait))})


class Guard:
    """ASGI middleware (inside the session middleware): access and CSRF, as the module docstring says."""

    def __init__(self, app: ASGIApp, token: str | None, limiter: LoginLimiter):
        self.app, self.token, self.limiter = app, token, limiter
        self.names = local_names()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if self.token is None and not self._local_host(host_of(scope)):
            await PlainTextResponse("this page has no access token: it answers only to this machine's own names "
                                    "(localhost, 127.0.0.1); set review.token to reach it by another name",
                                    status_code=421)(scope, receive, send)
            return
        bearer = self._bearer(scope)
        scope.setdefault("state", {})["bearer"] = False
        if bearer is not None and self.token is not None:
            wait = self.limiter.wait(client_of(scope))
            if wait:
                await too_many(wait)(scope, receive, send)
                return
            if not hmac.compare_digest(bearer.encode(), self.token.encode()):
                self.limiter.failed(client_of(scope))
                await PlainTextResponse("wrong access token", status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            scope["state"]["bearer"] = True
        elif self.token is not None and not scope["session"].get("auth") and not path.startswith(OPEN_PATHS):
            await self._login_needed(scope)(scope, receive, send)
            return
        if method not in ("GET", "HEAD", "OPTIONS") and not scope["state"]["bearer"]:
            receive, ok = await self._csrf_ok(scope, receive)
            if not ok:
                await PlainTextResponse("refused: this form's CSRF token is missing or stale; reload the page and "
                                        "try again", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _local_host(self, host: str) -> bool:
        return host in self.names or is_loopback(host)

    @staticmethod
    def _bearer(scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                kind, _, credentials = value.decode("latin-1").partition(" ")
                if kind.lower() == "bearer":
                    return credentials.strip()
        return None

    @staticmethod
    def _login_needed(scope: Scope) -> Response:
        wants_html = any(name == b"accept" and b"text/html" in value for name, value in scope.get("headers", []))
        if scope["method"] == "GET" and wants_html:
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        return JSONResponse({"error": "login needed: a session (the login form) or Authorization: Bearer TOKEN"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def _csrf_ok(self, scope: Scope, receive: Receive) -> tuple[Receive, bool]:
        """Whether the request carries the session's CSRF token; the body it read is handed on unchanged."""
        expected = scope["session"].get(CSRF_FIELD)
        headers = {name: value for name, value in scope.get("headers", [])}
        sent = headers.get(CSRF_HEADER.encode(), b"").decode("latin-1")
        body = b""
        if not sent and headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_FORM_BYTES:
                    return receive, False
            sent = (parse_qs(body.decode("latin-1")).get(CSRF_FIELD) or [""])[0]
        ok = bool(expected) and hmac.compare_digest(sent.encode(), str(expected).encode())
        if not body:
            return receive, ok
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay, ok


def check_token(token: str | None, given: str) -> bool:
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_routes() -> list[Any]:
    from starlette.routing import Route

    from .templating import render

    def limited(request: Request, target: str, wait: float, status_code: int) -> Response:
        """The login form saying how long to wait (a person at the form, not a script: the page, not a bare line)."""
        response = render(request, "login.html", status_code=status_code, next=target, error=too_many_text(wait),
                          wait=_seconds(wait))
        if status_code == 429:
            response.headers["Retry-After"] = str(_seconds(wait))
        return response

    async def login_form(request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        wait = request.app.state.limiter.wait(client_of(request.scope))
        if wait and request.app.state.token is not None:
            return limited(request, target, wait, 200)
        return render(request, "login.html", next=target, error=None)

    async def login(request: Request) -> Response:
        app = request.app
        limiter: LoginLimiter = app.state.limiter
        client = client_of(request.scope)
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        wait = limiter.wait(client)
        if wait:
            return limited(request, target, wait, 429)
        if app.state.token is None:
            return RedirectResponse(target, status_code=303)
        if not check_token(app.state.token, str(form.get("token") or "")):
            limiter.failed(client)
            return render(request, "login.html", status_code=401, next=target, error="wrong access token")
        request.session.clear()
        request.session["auth"] = True  # a fresh session (and CSRF token) once logged in
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login" if request.app.state.token else "/", status_code=303)

    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


__all__ = ["Guard", "LoginLimiter", "access_token", "csrf_token", "exposure_problem", "session_secret",
           "login_routes"]
