"""What the client does, written once for the sync and the async client.

Each operation is a generator that yields `Call`s (or `Sleep`s) and receives each call's
`Reply`; `Client` drives it with blocking httpx, `AsyncClient` with awaits. Long lists are
split into requests within the server's limits (read once from ``GET /v1/info``)."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from tqdm.auto import tqdm

from gapfix.client.errors import GapfixClientError
from gapfix.client.payloads import (
    ImageInput,
    Part,
    as_rows,
    body,
    dumps,
    image_field,
    item_part,
    pack,
    query_part,
    vector_json,
)

T = TypeVar("T")
Role = Literal["query", "document"]


@dataclass(frozen=True)
class Call:
    """One HTTP request of an operation (``content`` already encoded)."""

    method: str
    path: str
    content: bytes | None = None
    content_type: str = "application/json"
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` before the operation goes on (polling a fit)."""

    seconds: float


@dataclass(frozen=True)
class Reply:
    status: int
    data: Any


Op = Generator[Call | Sleep, Reply | None, T]


@dataclass
class Embedded:
    """``/v1/embed``'s answer: unit vectors of the texts and of the images, in input order."""

    texts: np.ndarray
    images: np.ndarray
    model: str
    transform: str | None = None  # the method applied, if any
    transform_name: str | None = None
    fingerprint: str | None = None
    corrected: bool = False


def _renamed(exc: GapfixClientError, names: dict[str, list[str]]) -> GapfixClientError:
    """``exc`` with a batch-relative ``param`` (``texts[3]``, ``items[1].image_url``) renamed
    to the caller's index (``texts[259]``)."""
    if not exc.param:
        return exc
    m = re.match(r"^(\w+)\[(\d+)\](.*)$", exc.param)
    if not m or m.group(1) not in names or int(m.group(2)) >= len(names[m.group(1)]):
        return exc
    new = names[m.group(1)][int(m.group(2))] + m.group(3)
    message = exc.message.replace(exc.param, new)
    return GapfixClientError(exc.status, message, exc.type, new, exc.body)


def _one_view(replies: list[dict[str, Any]]) -> None:
    """All batches of one call went through the same transform (by fingerprint)."""
    prints = {r.get("fingerprint") for r in replies}
    if len(prints) > 1:
        raise GapfixClientError(
            409,
            f"the transform changed between the batches of this call (fingerprints "
            f"{sorted(map(str, prints))}): call again",
            type="transform_changed",
        )


class Operations:
    """The client's API; ``_run`` (sync or async) drives each operation."""

    progress: bool
    _info: dict[str, Any] | None

    def _run(self, op: Op[T]) -> T:  # pragma: no cover - provided by Client / AsyncClient
        raise NotImplementedError

    def _bar(self, total: int, desc: str, progress: bool | None) -> tqdm:
        on = self.progress if progress is None else progress
        return tqdm(total=total, desc=desc, unit="input", disable=not on, leave=False)

    def _batched(
        self,
        parts: Sequence[Part],
        send: Any,
        desc: str,
        progress: bool | None,
        max_count: int | None = None,
        on_reply: Any = None,
    ) -> Op[list[Any]]:
        """Send ``parts`` in requests within the limits: ``send(start, stop)`` -> (Call,
        names) per batch; the replies' data, in order (each also to ``on_reply``)."""
        limits = (yield from self._info_op())["limits"]
        ranges = list(pack(parts, limits, max_count)) or [(0, 0)]
        out = []
        with self._bar(len(parts), desc, progress) as bar:
            for start, stop in ranges:
                call, names = send(start, stop)
                try:
                    reply = yield call
                except GapfixClientError as exc:
                    raise _renamed(exc, names) from None
                out.append(reply.data)
                if on_reply is not None:
                    on_reply(reply.data)
                bar.update(stop - start)
        return out

    # ------------------------------------------------------------------------ info
    def _info_op(self) -> Op[dict[str, Any]]:
        if self._info is None:
            self._info = (yield Call("GET", "/v1/info")).data
        return self._info

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: model, dim, auth, limits (fetched once per client)."""
        return self._run(self._info_op())

    # ------------------------------------------------------------------------ embed
    def _embed(
        self,
        texts: str | Sequence[str] | None,
        images: ImageInput | Sequence[ImageInput] | None,
        transform: str | None,
        collection: str | None,
        role: Role,
        progress: bool | None,
    ) -> Op[Embedded]:
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if images is None:
            images = []
        elif isinstance(images, bytes | str | Path) or hasattr(images, "save"):
            images = [images]  # one image
        fields = [image_field(img) for img in images]  # type: ignore[union-attr]
        parts = [Part(dumps(t), texts=1) for t in texts]
        parts += [Part(dumps(v), images=1) for _, v in fields]
        n = len(texts)
        common = {
            "transform": transform,
            "collection": collection,
            "corrected": True if collection is not None and transform is None else None,
            "role": role if (transform or collection) else None,
        }
        layouts: list[list[int]] = []

        def send(start: int, stop: int) -> tuple[Call, dict[str, list[str]]]:
            idx = range(start, stop)
            t = [i for i in idx if i < n]
            inline = [i for i in idx if i >= n and fields[i - n][0] == "image"]
            urls = [i for i in idx if i >= n and fields[i - n][0] == "image_url"]
            layouts.append(inline + urls)
            lists = {"texts": [parts[i] for i in t], "images": [parts[i] for i in inline],
                     "image_urls": [parts[i] for i in urls]}  # fmt: skip
            names = {"texts": [f"texts[{i}]" for i in t],
                     "images": [f"images[{i - n}]" for i in inline],
                     "image_urls": [f"images[{i - n}]" for i in urls]}  # fmt: skip
            content = body(common, {k: v for k, v in lists.items() if v})
            return Call("POST", "/v1/embed", content), names

        replies = yield from self._batched(parts, send, "embed", progress)
        _one_view(replies)
        dim = int(replies[0].get("dim") or (yield from self._info_op()).get("dim") or 0)
        tv = [np.asarray(r["texts"], np.float32).reshape(-1, dim) for r in replies]
        iv = np.zeros((len(fields), dim), np.float32)
        for r, layout in zip(replies, layouts, strict=True):
            got = np.asarray(r["images"], np.float32).reshape(-1, dim)
            for row, i in zip(got, layout, strict=True):
                iv[i - n] = row
        last = replies[-1]
        return Embedded(
            texts=np.concatenate(tv) if tv else np.zeros((0, dim), np.float32),
            images=iv,
            model=last.get("model", ""),
            transform=last.get("transform"),
            transform_name=last.get("transform_name"),
            fingerprint=last.get("fingerprint"),
            corrected=bool(last.get("corrected")),
        )

    def embed(
        self,
        texts: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        *,
        transform: str | None = None,
        collection: str | None = None,
        role: Role = "document",
        progress: bool | None = None,
    ) -> Embedded:
        """Embed texts and images (bytes, paths, PIL images, ``http(s)://`` URLs fetched by
        the server, data URIs) with the server's model: raw unit vectors, or through a named
        ``transform`` or a ``collection``'s active transform (``role="query"`` uses the
        artifact's query-text mean). Long lists go in several requests; every batch must
        report the same transform fingerprint (else 409 ``transform_changed``)."""
        return self._run(self._embed(texts, images, transform, collection, role, progress))

    def embed_texts(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        """``embed(texts, ...).texts``: an (n, dim) float32 array."""
        return self._run(self._map(self._embed(texts, None, **self._kw(kw)), lambda e: e.texts))

    def embed_images(self, images: Sequence[ImageInput], **kw: Any) -> np.ndarray:
        """``embed(images=images, ...).images``: an (n, dim) float32 array."""
        return self._run(self._map(self._embed(None, images, **self._kw(kw)), lambda e: e.images))

    @staticmethod
    def _kw(kw: dict[str, Any]) -> dict[str, Any]:
        base = {"transform": None, "collection": None, "role": "document", "progress": None}
        unknown = set(kw) - set(base)
        if unknown:
            raise TypeError(f"unexpected arguments: {sorted(unknown)}")
        return {**base, **kw}

    @staticmethod
    def _map(op: Op[Any], fn: Any) -> Op[Any]:
        return fn((yield from op))

    # ------------------------------------------------------------------------ correct
    def _correct(self, vectors: Any, modality: str, transform: str | None,
                 collection: str | None, role: Role, progress: bool | None) -> Op[np.ndarray]:  # fmt: skip
        rows = as_rows(vectors)
        parts = [Part(vector_json(r)) for r in rows]
        common = {"modality": modality, "transform": transform, "collection": collection,
                  "role": role}  # fmt: skip

        def send(start: int, stop: int) -> tuple[Call, dict[str, list[str]]]:
            names = {"vectors": [f"vectors[{i}]" for i in range(start, stop)]}
            return Call("POST", "/v1/correct", body(common, {"vectors": parts[start:stop]})), names

        replies = yield from self._batched(parts, send, "correct", progress)
        _one_view(replies)
        return np.concatenate([np.asarray(r["vectors"], np.float32).reshape(-1, rows.shape[1])
                               for r in replies])  # fmt: skip

    def correct(
        self,
        vectors: Any,
        modality: Literal["image", "text"],
        *,
        transform: str | None = None,
        collection: str | None = None,
        role: Role = "document",
        progress: bool | None = None,
    ) -> np.ndarray:
        """Raw vectors (n, d) through a named ``transform`` or a ``collection``'s active one:
        the corrected unit vectors, (n, d) float32."""
        return self._run(self._correct(vectors, modality, transform, collection, role, progress))

    # ------------------------------------------------------------------------ search
    def _search(self, collection: str, queries: list[Part], single: bool, opts: dict[str, Any],
                progress: bool | None) -> Op[Any]:  # fmt: skip
        path = f"/v1/collections/{collection}/search"
        if single:
            reply = yield Call("POST", path, body(opts, {}, {"query": queries[0].json}))
            return reply.data["results"]

        def send(start: int, stop: int) -> tuple[Call, dict[str, list[str]]]:
            names = {"queries": [f"queries[{i}]" for i in range(start, stop)]}
            return Call("POST", path, body(opts, {"queries": queries[start:stop]})), names

        info = yield from self._info_op()
        max_q = info["limits"].get("max_queries_per_request", 1024)
        replies = yield from self._batched(queries, send, "search", progress, max_q)
        return [hits for r in replies for hits in r["batches"]]

    def search(
        self,
        collection: str,
        query: str | dict[str, Any] | np.ndarray | None = None,
        *,
        queries: Sequence[str | dict[str, Any]] | np.ndarray | None = None,
        modality: Literal["image", "text"] | None = None,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        corrected: bool = True,
        exclude_self: bool = True,
        progress: bool | None = None,
    ) -> list[Any]:
        """Search ``collection``. ``query``: a text, a vector (with ``modality``) or a query
        dict (``{"image": ...}``, ``{"id": ...}``) -> its hits. ``queries``: a list of those
        or an (n, d) array (with ``modality``) -> one list of hits per query, in several
        requests when long."""
        opts = {"k": k, "modalities": list(modalities) if modalities else None,
                "corrected": corrected, "exclude_self": exclude_self}  # fmt: skip

        def as_query(q: Any) -> dict[str, Any] | str:
            if isinstance(q, str | dict):
                return q
            if modality is None:
                raise ValueError("vector queries need `modality`")
            return {"vector": q, "modality": modality}

        if (query is None) == (queries is None):
            raise ValueError("give exactly one of `query` and `queries`")
        if query is not None:
            op = self._search(collection, [query_part(as_query(query))], True, opts, progress)
        else:
            items = as_rows(queries) if isinstance(queries, np.ndarray) else queries
            parts = [query_part(as_query(q)) for q in items]  # type: ignore[union-attr]
            op = self._search(collection, parts, False, opts, progress)
        return self._run(op)

    # ------------------------------------------------------------------------ items
    def _add_items(self, collection: str, items: list[Part], upsert: bool,
                   progress: bool | None) -> Op[dict[str, Any]]:  # fmt: skip
        path = f"/v1/collections/{collection}/items"
        done: dict[str, Any] = {"added": 0, "replaced": 0, "ids": []}

        def send(start: int, stop: int) -> tuple[Call, dict[str, list[str]]]:
            names = {"items": [f"items[{i}]" for i in range(start, stop)]}
            return Call("POST", path, body({"upsert": upsert}, {"items": items[start:stop]})), names

        def count(r: dict[str, Any]) -> None:
            done["added"] += r["added"]
            done["replaced"] += r["replaced"]
            done["ids"] += r["ids"]

        try:
            yield from self._batched(items, send, "add_items", progress, on_reply=count)
        except GapfixClientError as exc:
            if done["ids"]:
                exc.message += f" ({len(done['ids'])} items of earlier requests were written)"
                exc.args = (f"{exc.status} {exc.type or 'error'}: {exc.message}",)
            raise
        return done

    def add_items(
        self,
        collection: str,
        items: Iterable[dict[str, Any]],
        *,
        upsert: bool = False,
        progress: bool | None = None,
    ) -> dict[str, Any]:
        """Add items (dicts as the API takes them; ``image`` may be bytes, a path, a PIL image
        or a URL, vectors numpy arrays), in as many requests as the limits need. Each request
        is all or nothing; -> ``{"added", "replaced", "ids"}`` summed over them."""
        parts = [item_part(it) for it in items]
        return self._run(self._add_items(collection, parts, upsert, progress))
