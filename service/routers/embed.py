"""``POST /v1/embed``: texts and images -> vectors (JSON with base64 images, or multipart)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from gapfix.errors import InputError
from service.deps import StateDep, require_read
from service.encoding import check_counts, decode_images, encode, require_model
from service.errors import ApiError, responses
from service.media import load_images
from service.routing import JSONRoute
from service.schemas import EmbedRequest, EmbedResponse

router = APIRouter(
    route_class=JSONRoute, prefix="/v1", tags=["embed"], dependencies=[Depends(require_read)]
)

_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "corrected": {"type": "boolean", "default": False},
        "collection": {"type": "string"},
    },
}

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EmbedRequest.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


async def _parse(request: Request) -> tuple[EmbedRequest, list[tuple[str, bytes]]]:
    """The request as an EmbedRequest plus uploaded image files (multipart only)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        s = request.app.state.gapfix.settings
        try:
            form = await request.form(
                max_files=s.max_images_per_request + 1,
                max_fields=s.max_texts_per_request + 8,
                max_part_size=s.max_body_bytes,
            )
        except Exception as exc:  # malformed multipart, too many parts
            detail = str(getattr(exc, "detail", exc))
            if detail.startswith(("Too many fields", "Too many files")):
                raise ApiError(
                    413,
                    f"multipart body has too many parts: at most {s.max_texts_per_request} "
                    f"texts and {s.max_images_per_request} images per request",
                    param="body",
                ) from None
            if "exceeded maximum size" in detail:
                raise ApiError(413, f"multipart part too large: {detail}", param="body") from None
            raise ApiError(
                400, f"cannot parse the multipart body: {detail}", param="body"
            ) from None
        uploads: list[tuple[str, bytes]] = []
        texts: list[str] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "images" and isinstance(value, UploadFile):
                uploads.append((f"images[{len(uploads)}]", await value.read()))
            elif key == "texts" and isinstance(value, str):
                texts.append(value)
            elif key in ("corrected", "collection") and isinstance(value, str):
                fields[key] = value
            else:
                raise ApiError(422, f"unexpected form field {key!r}", param=key)
        await form.close()
        if "corrected" in fields:
            fields["corrected"] = fields["corrected"].strip().lower() in ("1", "true", "yes", "on")
        try:
            return EmbedRequest(texts=texts, **fields), uploads
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
    if ctype not in ("application/json", ""):
        raise ApiError(415, f"unsupported content type {ctype!r}: send JSON or multipart")
    body = await request.body()
    try:
        return EmbedRequest.model_validate_json(body or b"{}"), []
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed texts and images",
    openapi_extra=_OPENAPI_BODY,
    responses=responses(400, 401, 404, 413, 415, 422, 429),
)
async def embed(request: Request, state: StateDep) -> EmbedResponse:
    """Embed with the server's model. JSON: ``{"texts": [...], "images": [base64...]}``;
    multipart: repeated ``texts`` fields and ``images`` files. ``corrected: true`` applies the
    active transform of ``collection``. Output vectors are L2-normalised float32."""
    req, uploads = await _parse(request)
    n_images = len(req.images) + len(uploads)
    check_counts(state, len(req.texts), n_images)
    if not req.texts and not n_images:
        raise InputError("nothing to embed: give texts and/or images", param="texts")
    require_model(state, "texts" if req.texts else "images")
    coll = None
    if req.corrected:
        if req.collection is None:
            raise InputError("corrected vectors need a collection (its active transform)",
                             param="collection")  # fmt: skip
        if state.store is None:
            raise ApiError(503, "the service is not ready", type="not_ready")
        coll = state.store.get(req.collection)
    decoded = await decode_images(state, [(f"images[{i}]", b) for i, b in enumerate(req.images)])
    pils = [img for img, _ in decoded]
    if uploads:
        offset = len(req.images)
        blobs = [(f"images[{offset + i}]", data) for i, (_, data) in enumerate(uploads)]
        pils += await run_in_threadpool(load_images, blobs, state.settings.max_image_pixels)
    tv, iv = await encode(state, req.texts, pils)
    dim = state.dim or 0
    tv = np.zeros((0, dim), np.float32) if tv is None else tv
    iv = np.zeros((0, dim), np.float32) if iv is None else iv
    transform = None
    if coll is not None:
        transform = coll.active_transform

        def correct() -> tuple[np.ndarray, np.ndarray]:
            return (
                coll.correct(tv, "text") if len(tv) else tv,
                coll.correct(iv, "image") if len(iv) else iv,
            )

        tv, iv = await run_in_threadpool(correct)
    return EmbedResponse(
        model=state.model_id or "",
        dim=state.dim or 0,
        corrected=coll is not None,
        transform=None if transform is None else transform.method,
        texts=tv.tolist(),
        images=iv.tolist(),
    )
