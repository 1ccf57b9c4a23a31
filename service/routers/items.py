"""Items of a collection: add/upsert (texts, images, vectors, documents), get, list, delete,
thumbnail."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from gapfix.store import ItemIn
from service.deps import CollectionDep, StateDep, require_read, require_write
from service.encoding import check_counts, decode_images, decode_urls, encode, require_model
from service.errors import ApiError, responses
from service.routing import JSONRoute
from service.schemas import Deleted, ItemInput, ItemList, ItemOut, ItemsAdd, ItemsAdded

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/collections/{collection}/items", tags=["items"]
)


async def build_items(state, items: list[ItemInput]) -> list[ItemIn]:
    """Request items -> store items: encode what has no vector, decode images for thumbnails."""
    texts: list[tuple[int, str]] = []
    b64: list[tuple[int, str]] = []
    urls: list[tuple[int, str]] = []
    for i, it in enumerate(items):
        has_text_vec = it.text_vector is not None or it.modality == "text"
        has_image_vec = it.image_vector is not None or it.modality == "image"
        if it.text is not None and not has_text_vec:
            texts.append((i, it.text))
        for field, value, into in (("image", it.image, b64), ("image_url", it.image_url, urls)):
            if value is not None:
                into.append((i, value))
                if not has_image_vec:
                    require_model(state, f"items[{i}].{field}")
    check_counts(state, len(texts), len(b64) + len(urls), "items request")
    if texts:
        require_model(state, f"items[{texts[0][0]}].text")
    # every image is decoded (URLs fetched) before anything is encoded or written
    decoded = await decode_images(
        state, [(f"items[{i}].image", data) for i, data in b64], thumbnails=True
    )
    decoded += await decode_urls(state, [(f"items[{i}].image_url", u) for i, u in urls], True)
    images = b64 + urls
    to_encode = [
        (i, img)
        for (i, _), (img, _) in zip(images, decoded, strict=True)
        if not (items[i].image_vector is not None or items[i].modality == "image")
    ]
    tv, iv = (None, None)
    if texts or to_encode:
        tv, iv = await encode(state, [t for _, t in texts], [img for _, img in to_encode])
    text_vecs: dict[int, np.ndarray] = {}
    image_vecs: dict[int, np.ndarray] = {}
    for n, (i, _) in enumerate(texts):
        text_vecs[i] = tv[n]
    for n, (i, _) in enumerate(to_encode):
        image_vecs[i] = iv[n]
    thumbs = {i: th for (i, _), (_, th) in zip(images, decoded, strict=True)}
    out = []
    for i, it in enumerate(items):
        image = it.image_vector if it.image_vector is not None else image_vecs.get(i)
        text = it.text_vector if it.text_vector is not None else text_vecs.get(i)
        if it.vector is not None:
            if it.modality == "image":
                image = it.vector
            else:
                text = it.vector
        out.append(
            ItemIn(
                id=it.id,
                image=image,
                text=text,
                metadata=it.metadata,
                weight=it.weight,
                thumbnail=thumbs.get(i),
                caption=it.text,
            )
        )
    return out


@router.post(
    "",
    response_model=ItemsAdded,
    summary="Add items",
    dependencies=[Depends(require_write)],
    responses=responses(400, 401, 404, 409, 413, 422, 429),
)
async def add_items(req: ItemsAdd, coll: CollectionDep, state: StateDep) -> ItemsAdded:
    """Add (or with ``upsert`` replace) a batch of items, all or nothing. Texts and images are
    encoded with the server's model unless their vectors are given; ``text`` is kept as the
    caption and each uploaded image as a JPEG thumbnail. An existing id is a 409."""
    items = await build_items(state, req.items)
    res = await run_in_threadpool(coll.add, items, req.upsert)
    return ItemsAdded(added=res["added"], replaced=res["replaced"], ids=[it.id for it in items])


@router.get(
    "",
    response_model=ItemList,
    summary="List item ids",
    dependencies=[Depends(require_read)],
    responses=responses(401, 404, 422),
)
async def list_items(
    coll: CollectionDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> ItemList:
    """Item ids and modalities in insertion order."""
    rows = await run_in_threadpool(coll.list_items, offset, limit)
    return ItemList(
        items=[{"id": i, "modality": m} for i, m in rows],
        offset=offset,
        limit=limit,
        total=coll.count(),
    )


@router.get(
    "/{item_id:path}/thumbnail",
    summary="An item's thumbnail",
    response_class=Response,
    dependencies=[Depends(require_read)],
    responses={200: {"content": {"image/jpeg": {}}}, **responses(400, 401, 404)},
)
async def get_thumbnail(item_id: str, coll: CollectionDep) -> Response:
    """The JPEG thumbnail made when the item's image was uploaded; 404 if it has none.

    Item ids may contain ``/`` (``gapfix embed`` on a folder uses relative paths), so this
    route is declared before ``GET /{item_id:path}``."""
    data = await run_in_threadpool(coll.get_thumbnail, item_id)
    if data is None:
        raise ApiError(404, f"item {item_id!r} has no thumbnail", param="item_id")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


@router.get(
    "/{item_id:path}",
    response_model=ItemOut,
    summary="Get an item",
    dependencies=[Depends(require_read)],
    responses=responses(400, 401, 404),
)
async def get_item(
    item_id: str,
    coll: CollectionDep,
    vectors: Annotated[bool, Query(description="Include the raw stored vectors.")] = False,
) -> ItemOut:
    item = await run_in_threadpool(coll.get_item, item_id)
    vecs = None
    if vectors:
        vecs = {m: v.tolist() for m in ("image", "text") if (v := getattr(item, m)) is not None}
    return ItemOut(
        id=item.id,
        modality=item.modality,
        metadata=item.metadata,
        text=item.caption,
        has_thumbnail=item.has_thumbnail,
        weight=item.weight,
        created_at=item.created_at,
        vectors=vecs,
    )


@router.delete(
    "/{item_id:path}",
    response_model=Deleted,
    summary="Delete an item",
    dependencies=[Depends(require_write)],
    responses=responses(400, 401, 404),
)
async def delete_item(item_id: str, coll: CollectionDep) -> Deleted:
    await run_in_threadpool(coll.delete_item, item_id)
    return Deleted(deleted=item_id)
