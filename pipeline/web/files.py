"""Files of the review page, served by the id of a record the store holds, never by a path from the request:
thumbnails and previews of outputs and inputs, a job's thumbnail, an output's subject check and the
input as that output frames it (the slider's "before"). Every image is
made once and cached (``pipeline.previews``); a file whose bytes no longer match its record is a 404 saying why.
The endpoints are plain functions: Starlette runs them in its thread pool (decoding and the store's SQLite).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .. import previews

CACHE = "private, max-age=300"  # a record's image changes only when its file does (then it is a 404)


def _serving(make: Callable[[Request], tuple[Path, dict[str, str]]], media_type: str) -> Callable[[Request], Response]:
    """An endpoint serving the cached file ``make`` returns (with extra headers), or a 404 with the reason."""
    def endpoint(request: Request) -> Response:
        if request.path_params.get("kind", "thumb") not in previews.SIZES:
            return PlainTextResponse("no such image kind (thumb or preview)\n", status_code=404)
        try:
            path, headers = make(request)
        except previews.NotServed as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": CACHE, **headers})
    endpoint.__doc__ = make.__doc__
    return endpoint


def output_image(request: Request) -> tuple[Path, dict[str, str]]:
    """``/files/output/{output_id}/{thumb|preview}``; an output replaced by a later job: the picture kept in the
    cache, if any (its file now holds the later job's output)."""
    state = request.app.state
    output_id, kind = request.path_params["output_id"], request.path_params["kind"]
    try:
        _, source = previews.output_source(state.store, output_id)
    except previews.NotServed:
        row = state.store.output_row(output_id)
        kept = previews.kept_view(state.config, row.get("sha256"), kind) if row and row.get("replaced_by") else None
        if kept is None:
            raise
        return kept, {}
    return previews.view(state.config, source, kind), {}


def input_image(request: Request) -> tuple[Path, dict[str, str]]:
    """``/files/input/{job_id}/{thumb|preview}``: the input where it is now (its inbox, or moved by ``after: move``)."""
    state = request.app.state
    _, source = previews.input_source(state.store, request.path_params["job_id"])
    return previews.view(state.config, source, request.path_params["kind"]), {}


def job_thumb(request: Request) -> tuple[Path, dict[str, str]]:
    """``/files/job/{job_id}/thumb``: its first output still as recorded, else its input."""
    state = request.app.state
    return previews.job_thumb(state.config, state.store, request.path_params["job_id"]), {}


def output_check(request: Request) -> tuple[Path, dict[str, str]]:
    """``/files/output/{output_id}/check``: the subject check overlay; the share equal in ``X-Subject-Equal``, the
    share changed on purpose as recorded in ``X-Subject-On-Purpose``, the page's line in ``X-Subject-Share``."""
    state = request.app.state
    path, result = previews.check(state.config, state.store, request.path_params["output_id"])
    headers = {"X-Subject-Share": result.share_line().encode("ascii", "replace").decode()}  # a header is latin-1
    if result.equal is not None:
        headers["X-Subject-Equal"] = f"{result.equal:.6f}"
    if result.on_purpose is not None:
        headers["X-Subject-On-Purpose"] = f"{result.on_purpose:.6f}"
    return path, headers


def output_before(request: Request) -> tuple[Path, dict[str, str]]:
    """``/files/output/{output_id}/before``: the input resized and placed as the output frames it (the slider)."""
    state = request.app.state
    return previews.before(state.config, state.store, request.path_params["output_id"]), {}


def routes() -> list[BaseRoute]:
    return [
        Route("/files/output/{output_id:int}/check", _serving(output_check, "image/png")),
        Route("/files/output/{output_id:int}/before", _serving(output_before, "image/webp")),
        Route("/files/output/{output_id:int}/{kind:str}", _serving(output_image, "image/webp")),
        Route("/files/input/{job_id:int}/{kind:str}", _serving(input_image, "image/webp")),
        Route("/files/job/{job_id:int}/thumb", _serving(job_thumb, "image/webp")),
    ]
