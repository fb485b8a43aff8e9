"""The HTTP service: a thin FastAPI adapter over :class:`~cmcrec.recommender.Recommender`.

Every endpoint calls the same method a library user would (``predict``,
``recommend``, ``recommend_for_ratings``, ``item_info``) and turns its result
into JSON; nothing here scores, ranks or filters on its own.

Errors: request bodies are validated by pydantic before the model is touched
(size limits, types, unknown fields), so bad input is a 4xx with a message that
names the field, never a 5xx. :class:`~cmcrec.errors.UnknownIdError` becomes
404 naming the id; any other :class:`~cmcrec.errors.CmcrecError` (a rating
outside the scale, ...) becomes 422 with the library's message.

Concurrency: endpoints are plain ``def`` functions, which FastAPI runs in its
thread pool, because inference is CPU-bound and synchronous. After the warm-up
in :func:`create_app` the recommender's prediction paths only read shared state
(the module in eval mode under ``no_grad``, the training graph, the candidate
generator, the vocabularies) and build their batchers per call, so requests run
concurrently without a lock. The warm-up builds the objects the recommender
otherwise creates lazily on first use, so no two threads race to build them.

Run it with ``cmcrec serve --model DIR`` (see ``docs/service.md``).
"""

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cmcrec._version import __version__
from cmcrec.errors import CmcrecError, UnknownIdError
from cmcrec.recommender import Recommender
from cmcrec.service.schemas import (
    ErrorResponse,
    Health,
    ItemInfo,
    NewUserResponse,
    Prediction,
    PredictResponse,
    RecommendResponse,
    request_models,
)

DESCRIPTION = """\
Rating predictions and top-k recommendations from a trained cmcrec model
(MCCL, IGMC or an MF baseline), for users in the training data and for new
users given as a few ratings (no retraining).

Ids are strings (integers are accepted and read as their decimal string).
Errors are JSON objects `{"error": kind, "message": text}`: 404 for an unknown
user or item id, 400 for a malformed or empty body, 413 for a body over the size
limit, 422 for a body that fails validation (the message names the field).
"""

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON or an empty body."},
    404: {"model": ErrorResponse, "description": "Unknown user or item id."},
    413: {"model": ErrorResponse, "description": "Request body over the size limit."},
    422: {"model": ErrorResponse, "description": "A field failed validation (the message names it)."},
}


def create_app(
    model_dir: str | Path,
    *,
    max_k: int = 100,
    max_ratings: int = 500,
    max_items: int = 1000,
    max_body_bytes: int = 1 << 20,
    device: str = "cpu",
) -> FastAPI:
    """Load the model in ``model_dir`` once and return the app serving it.

    Args:
        model_dir: a directory written by ``cmcrec train --out`` / :meth:`Recommender.save`.
        max_k: largest ``k`` a recommendation request may ask for.
        max_ratings: most ratings one ``/recommend/new-user`` request may carry.
        max_items: most items one ``/predict`` request may score.
        max_body_bytes: larger request bodies are refused with 413 before they are parsed.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ArtifactError: ``model_dir`` is not a readable model artifact.
        ValueError: a limit is not a positive integer.
    """
    models = request_models(max_k=max_k, max_items=max_items, max_ratings=max_ratings)
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    rec = Recommender.load(model_dir, device=device)
    _warm_up(rec)

    app = FastAPI(
        title="cmcrec recommender",
        description=DESCRIPTION,
        version=__version__,
        docs_url="/docs",
        openapi_url="/openapi.json",
        responses=_ERROR_RESPONSES,
    )
    app.state.recommender = rec
    app.state.limits = {
        "max_k": max_k,
        "max_ratings": max_ratings,
        "max_items": max_items,
        "max_body_bytes": max_body_bytes,
    }
    app.add_middleware(_BodySizeLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)

    PredictRequest, RecommendRequest, NewUserRequest = models.predict, models.recommend, models.new_user

    @app.get("/health", response_model=Health, tags=["service"], summary="Liveness and the model being served")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": rec.model_name,
            "num_users": len(rec.users),
            "num_items": len(rec.items),
            "cmcrec_version": __version__,
        }

    @app.get(
        "/items/{item_id:path}",
        response_model=ItemInfo,
        response_model_exclude_none=True,
        tags=["items"],
        summary="One catalogue item: title, genres, number of training ratings",
    )
    def item(item_id: str) -> dict[str, Any]:
        return rec.item_info(rec.items.index(item_id))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        tags=["predictions"],
        summary="Predicted ratings of a training user for the given items",
    )
    def predict(body: PredictRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        scores = rec.predict(body.user, body.items)
        return {
            "user": body.user,
            "predictions": [Prediction(item=i, score=float(s)) for i, s in zip(body.items, scores, strict=True)],
        }

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        response_model_exclude_none=True,
        tags=["recommendations"],
        summary="Top-k items for a training user",
    )
    def recommend(body: RecommendRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        recs = rec.recommend(body.user, k=body.k, exclude_seen=body.exclude_seen)
        return {"user": body.user, "items": [r.to_dict() for r in recs]}

    @app.post(
        "/recommend/new-user",
        response_model=NewUserResponse,
        response_model_exclude_none=True,
        tags=["recommendations"],
        summary="Top-k items for a new user from a few of their ratings (no retraining)",
    )
    def recommend_new_user(body: NewUserRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        recs = rec.recommend_for_ratings(body.ratings, k=body.k)
        return {"items": [r.to_dict() for r in recs]}

    return app


def _warm_up(rec: Recommender) -> None:
    """Build what the recommender creates lazily, once, before any request thread can race for it."""
    rec.users.lookup([])
    rec.items.lookup([])
    _ = rec.graph  # every predict_indices call passes it to the batcher factory
    if not hasattr(rec.module, "fold_in") or not hasattr(rec.module, "score_all"):
        _ = rec.candidate_generator  # subgraph models re-rank its candidates
    if len(rec.users) and len(rec.items):
        # One tiny prediction exercises the whole path (and any lazy state inside the module, the fused CPU
        # kernels' one-time build included: cmcrec.models.kernels).
        rec.predict_indices(np.zeros(1, np.int64), np.zeros(1, np.int64))


# -- errors ---------------------------------------------------------------------------------------------


def _error(status: int, kind: str, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": kind, "message": message}
    if errors is not None:
        content["errors"] = errors
    return JSONResponse(status_code=status, content=content)


def _where(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _describe(err: dict[str, Any]) -> str:
    where = _where(err.get("loc", ()))
    kind = err.get("type")
    if kind == "missing":
        return f"{where}: field required"
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    msg = str(err.get("msg", "invalid value"))
    # pydantic prefixes messages of custom validators with "Value error, ".
    return f"{where}: {msg.removeprefix('Value error, ')}"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errs = list(exc.errors())
    for e in errs:
        kind, loc = e.get("type"), tuple(e.get("loc", ()))
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "invalid JSON")
            pos = loc[1] if len(loc) > 1 else "?"
            return _error(400, "bad_json", f"malformed JSON body at character {pos}: {detail}")
        if loc == ("body",) and kind == "missing":
            return _error(400, "empty_body", "request body is empty; expected a JSON object")
        if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
            return _error(
                400,
                "bad_body",
                "request body must be a JSON object sent with Content-Type: application/json",
            )
    entries = [{"loc": _where(e.get("loc", ())), "type": e.get("type"), "message": _describe(e)} for e in errs]
    return _error(422, "invalid_request", "; ".join(e["message"] for e in entries), entries)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(UnknownIdError)
    async def on_unknown_id(request: Request, exc: UnknownIdError) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(CmcrecError)
    async def on_cmcrec_error(request: Request, exc: CmcrecError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no endpoint {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": kinds.get(exc.status_code, "http_error"), "message": message},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: the client still gets the documented JSON error; Starlette
        # re-raises the exception after this response, so the server logs its traceback.
        return _error(500, "internal_error", "internal server error (a bug; the traceback is in the server log)")


class _BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before they are read into memory and parsed.

    A declared ``Content-Length`` over the limit is answered at once; a body
    without one (chunked) is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = _error(413, "body_too_large", f"request body over the limit of {self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


__all__ = ["create_app"]
