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
from service import correcting
from service.deps import StateDep, require_read
from service.encoding import check_counts, decode_images, decode_urls, encode, require_model
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
        "image_urls": {"type": "array", "items": {"type": "string"}},
        "corrected": {"type": "boolean", "default": False},
        "collection": {"type": "string"},
        "transform": {"type": "string"},
        "role": {"type": "string", "enum": ["query", "document"], "default": "document"},
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
        urls: list[str] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "images" and isinstance(value, UploadFile):
                uploads.append((f"images[{len(uploads)}]", await value.read()))
            elif key == "texts" and isinstance(value, str):
                texts.append(value)
            elif key == "image_urls" and isinstance(value, str):
                urls.append(value)
            elif key in ("corrected", "collection", "transform", "role") and isinstance(value, str):
                fields[key] = value
            else:
                raise ApiError(422, f"unexpected form field {key!r}", param=key)
        await form.close()
        if "corrected" in fields:
            fields["corrected"] = fields["corrected"].strip().lower() in ("1", "true", "yes", "on")
        try:
            return EmbedRequest(texts=texts, image_urls=urls, **fields), uploads
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
    """Embed with the server's model. JSON: ``{"texts": [...], "images": [base64...],
    "image_urls": [...]}``; multipart: repeated ``texts`` and ``image_urls`` fields and
    ``images`` files. ``corrected: true`` applies the active transform of ``collection``.
    Output vectors are L2-normalised float32; image vectors are in the order ``images`` (or
    files), then ``image_urls``. A URL that is refused or cannot be fetched or decoded is a
    400 naming it (``image_urls[i]``)."""
    req, uploads = await _parse(request)
    n_images = len(req.images) + len(uploads) + len(req.image_urls)
    check_counts(state, len(req.texts), n_images)
    if not req.texts and not n_images:
        raise InputError("nothing to embed: give texts and/or images", param="texts")
    require_model(state, "texts" if req.texts else "images")
    target = None
    if req.transform is not None:
        if "corrected" in req.model_fields_set and not req.corrected:
            raise InputError("`transform` corrects: drop `corrected: false`", param="corrected")
        target = correcting.resolve(state, req.transform, req.collection, use_default=False)
        correcting.check_model_dim(state, target)
    elif req.corrected:
        if req.collection is None:
            raise InputError("corrected vectors need a collection (its active transform) "
                             "or a named transform", param="collection")  # fmt: skip
        target = correcting.of_collection(state, req.collection)
    decoded = await decode_images(state, [(f"images[{i}]", b) for i, b in enumerate(req.images)])
    pils = [img for img, _ in decoded]
    if uploads:
        offset = len(req.images)
        blobs = [(f"images[{offset + i}]", data) for i, (_, data) in enumerate(uploads)]
        pils += await run_in_threadpool(load_images, blobs, state.settings.max_image_pixels)
    fetched = await decode_urls(
        state, [(f"image_urls[{i}]", u) for i, u in enumerate(req.image_urls)]
    )
    pils += [img for img, _ in fetched]
    tv, iv = await encode(state, req.texts, pils)
    dim = state.dim or 0
    tv = np.zeros((0, dim), np.float32) if tv is None else tv
    iv = np.zeros((0, dim), np.float32) if iv is None else iv
    if target is not None:  # one view: the vectors and the name/fingerprint belong together
        t = target

        def correct() -> tuple[np.ndarray, np.ndarray]:
            return t.apply(tv, "text", req.role), t.apply(iv, "image", req.role)

        tv, iv = await run_in_threadpool(correct)
    return EmbedResponse(
        model=state.model_id or "",
        dim=state.dim or 0,
        corrected=target is not None,
        transform=None if target is None else target.method,
        transform_name=None if target is None else target.name,
        fingerprint=None if target is None else target.fingerprint,
        texts=tv.tolist(),
        images=iv.tolist(),
    )
