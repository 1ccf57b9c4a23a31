"""Request and response models of the HTTP API (pydantic; examples feed the OpenAPI page)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from gapfix.transforms import METHODS
from gapfix.transforms.auto import OBJECTIVES

Modality = Literal["image", "text"]
ItemModality = Literal["image", "text", "document"]
IndexKind = Literal["flat", "hnsw", "ivfpq"]
Method = Literal[METHODS]  # type: ignore[valid-type]
Objective = Literal[OBJECTIVES]  # type: ignore[valid-type]
Vector = Annotated[
    list[Annotated[float, Strict()]],  # no booleans or numeric strings (JSON ints are fine)
    Field(min_length=1, max_length=65536, description="A raw embedding (any norm)."),
]
CollectionName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1-64 letters, digits, '_' or '-'.")
]
TransformName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="A named transform (PUT /v1/transforms/{name}); an alternative to "
        "`collection`.",
    ),
]
Role = Literal["query", "document"]
ROLE_FIELD = Field(
    "document",
    description="`query` applies the artifact's query-text mean to texts where it has one; "
    "`document` (default) the text map.",
)
ItemId = Annotated[str, Field(min_length=1, max_length=256, description="Client-chosen id.")]
Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="A JPEG/PNG/WebP/GIF image, base64 (standard or URL-safe; a data: URL "
        "prefix is accepted).",
    ),
]
ImageUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=8192,
        description="An http(s) URL of a JPEG/PNG/WebP/GIF image, fetched by the server (public "
        "addresses only, unless GAPFIX_URL_ALLOW lists it).",
    ),
]
Metadata = Annotated[
    dict[str, Any] | None,
    Field(
        description="Any JSON object (at most 64 KiB), returned as is (integers beyond 64 bits come back as floats)."
    ),
]

_V = [0.12, -0.03, 0.4]  # short example vectors (real ones have the model's dimension)


class _Model(BaseModel):
    """Request models: unknown fields refused; numbers and booleans are strict (``Field(strict=
    True)``): ``"10"``, ``true`` for a number, ``1`` or ``"true"`` for a boolean are 422s, while
    a JSON integer stays a valid float."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- embed / correct
class EmbedRequest(_Model):
    """Texts and/or images to embed with the server's model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["a dog on a beach"], "images": []}]},
    )
    texts: list[str] = Field(default_factory=list, description="Texts to embed.")
    images: list[Base64Image] = Field(default_factory=list, description="Base64 images.")
    image_urls: list[ImageUrl] = Field(
        default_factory=list,
        description="Image URLs, fetched by the server; their vectors follow those of `images`.",
    )
    corrected: bool = Field(
        False,
        strict=True,
        description="Apply the active transform of `collection` (required then).",
    )
    collection: CollectionName | None = Field(
        None, description="Collection whose transform corrects."
    )
    transform: TransformName | None = None
    role: Role = ROLE_FIELD


class EmbedResponse(BaseModel):
    model: str = Field(description="Model id (architecture/weights).")
    dim: int
    corrected: bool
    transform: str | None = Field(description="Method of the transform applied, if any.")
    transform_name: str | None = Field(None, description="The named transform applied, if any.")
    fingerprint: str | None = Field(None, description="Content hash of the transform applied.")
    texts: list[list[float]] = Field(description="One unit vector per text, in order.")
    images: list[list[float]] = Field(
        description="One unit vector per image, in order: `images` (or uploaded files), then "
        "`image_urls`."
    )


class CorrectRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"modality": "text", "vectors": [_V], "collection": "photos"}]
        },
    )
    modality: Modality = Field(description="Modality of the vectors.")
    vectors: list[Vector] = Field(min_length=1, description="Raw vectors to correct.")
    collection: CollectionName | None = Field(
        None, description="Collection whose active transform applies."
    )
    transform: TransformName | None = None
    role: Role = ROLE_FIELD

    @model_validator(mode="after")
    def _one_target(self) -> CorrectRequest:
        if (self.collection is None) == (self.transform is None):
            raise ValueError("give exactly one of `collection` and `transform`")
        return self


class CorrectResponse(BaseModel):
    collection: str | None = Field(description="The collection named, if any.")
    modality: Modality
    transform: str | None = Field(description="Method of the active transform (None: identity).")
    transform_name: str | None = Field(None, description="The named transform applied, if any.")
    fingerprint: str | None = Field(None, description="Content hash of the transform applied.")
    vectors: list[list[float]] = Field(description="Corrected unit vectors, in order.")


# ---------------------------------------------------------------------------- collections
class CollectionCreate(_Model):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "photos", "index": "flat"}]}
    )
    name: CollectionName
    index: IndexKind = Field("flat", description="flat (exact), hnsw, or ivfpq.")
    index_params: dict[str, Any] | None = Field(
        None,
        description="Index settings, e.g. {'hnsw_m': 32, 'ef_search': 128} for hnsw, {'nlist': 1024} for ivfpq.",
    )
    dim: int | None = Field(
        None,
        strict=True,
        ge=1,
        le=65536,
        description="Embedding dimension (default: the model's; in vectors mode: the first "
        "vectors').",
    )


class CollectionInfo(BaseModel):
    name: str
    index: str
    index_params: dict[str, Any]
    dim: int | None
    count: int
    counts: dict[str, int] = Field(description="Items per modality: image, text, document.")
    transform: str | None = Field(description="Method of the active transform.")
    transform_status: str = Field(description="active | rebuilding | failed")
    created_at: float
    gpu: bool


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class Deleted(BaseModel):
    deleted: str = Field(description="Name or id of what was deleted.")


# ---------------------------------------------------------------------------- items
class ItemInput(_Model):
    """One item. Its image vector comes from `image_vector`, `vector` with modality image, or
    the encoded `image` (base64, or fetched from `image_url`); its text vector from
    `text_vector`, `vector` with modality text, or the encoded `text`. An item with both is a
    document. `text` is also kept as the caption and the image as a thumbnail."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"id": "cap-1", "text": "a dog on a beach", "metadata": {"lang": "en"}},
                {"id": "img-1", "image": "<base64 JPEG>"},
                {"id": "img-2", "image_url": "https://example.com/dog.jpg"},
                {"id": "doc-1", "text": "a dog", "image": "<base64 JPEG>", "weight": 0.5},
                {"id": "vec-1", "vector": _V, "modality": "image"},
                {"id": "doc-2", "image_vector": _V, "text_vector": _V, "text": "a dog"},
            ]
        },
    )
    id: ItemId
    text: str | None = Field(None, description="Caption; encoded unless a text vector is given.")
    image: Base64Image | None = None
    image_url: ImageUrl | None = Field(
        None, description="Instead of `image`: fetched by the server, then as `image`."
    )
    vector: Vector | None = None
    modality: Modality | None = Field(None, description="Modality of `vector`.")
    image_vector: Vector | None = None
    text_vector: Vector | None = None
    weight: float = Field(
        0.5, strict=True, ge=0, le=1, description="Image weight of a document's vector."
    )
    metadata: Metadata = None

    @model_validator(mode="after")
    def _check(self) -> ItemInput:
        if (self.vector is None) != (self.modality is None):
            raise ValueError("`vector` and `modality` go together")
        if self.vector is not None:
            other = self.image_vector if self.modality == "image" else self.text_vector
            if other is not None:
                raise ValueError(f"give the {self.modality} vector once (`vector` or "
                                 f"`{self.modality}_vector`)")  # fmt: skip
        if self.image is not None and self.image_url is not None:
            raise ValueError("give `image` or `image_url`, not both")
        if not any(
            x is not None
            for x in (
                self.text,
                self.image,
                self.image_url,
                self.vector,
                self.image_vector,
                self.text_vector,
            )
        ):
            raise ValueError(
                "an item needs text, image, image_url, vector, image_vector or text_vector"
            )
        return self


class ItemsAdd(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"items": [{"id": "cap-1", "text": "a dog on a beach"}], "upsert": False}]
        },
    )
    items: list[ItemInput] = Field(min_length=1)
    upsert: bool = Field(
        False, strict=True, description="Replace items whose id exists (else 409)."
    )


class ItemsAdded(BaseModel):
    added: int
    replaced: int
    ids: list[str]


class ItemOut(BaseModel):
    id: str
    modality: ItemModality
    metadata: dict[str, Any]
    text: str | None = Field(description="The caption, if the item has one.")
    has_thumbnail: bool
    weight: float | None = Field(description="Image weight (documents only).")
    created_at: float
    vectors: dict[str, list[float]] | None = Field(
        None, description="Raw stored vectors (with ?vectors=true)."
    )


class ItemRef(BaseModel):
    id: str
    modality: ItemModality


class ItemList(BaseModel):
    items: list[ItemRef]
    offset: int
    limit: int
    total: int


# ---------------------------------------------------------------------------- search
class Query(_Model):
    """Exactly one of `text`, `image`, `vector` (with `modality`) or `id`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "a dog on a beach"},
                {"vector": _V, "modality": "text"},
                {"id": "img-1"},
            ]
        },
    )
    text: str | None = None
    image: Base64Image | None = None
    vector: Vector | None = None
    modality: Modality | None = Field(None, description="Modality of `vector`.")
    id: ItemId | None = Field(None, description="Search with a stored item's own vector.")

    @model_validator(mode="after")
    def _one(self) -> Query:
        given = [k for k in ("text", "image", "vector", "id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a query needs exactly one of text, image, vector, id")
        if (self.vector is None) != (self.modality is None):
            raise ValueError("`vector` and `modality` go together")
        return self


class SearchRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": {"text": "a dog on a beach"}, "k": 10, "modalities": ["image"]},
                {"queries": [{"id": "img-1"}, {"vector": _V, "modality": "text"}], "k": 5},
            ]
        },
    )
    query: Query | None = None
    queries: list[Query] | None = Field(None, min_length=1, description="A batch of queries.")
    k: int = Field(10, strict=True, ge=1, le=1000, description="Results per query.")
    modalities: list[ItemModality] | None = Field(
        None, min_length=1, description="Item modalities to return (default: all)."
    )
    corrected: bool = Field(
        True, strict=True, description="false: search the raw (uncorrected) vectors."
    )
    exclude_self: bool = Field(
        True, strict=True, description="Id queries: leave the item itself out."
    )

    @model_validator(mode="after")
    def _one(self) -> SearchRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` and `queries`")
        return self


class Hit(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity in the searched space.")
    modality: ItemModality
    metadata: dict[str, Any]
    text: str | None = Field(description="The item's caption, if any.")
    has_thumbnail: bool


class SearchResponse(BaseModel):
    results: list[Hit] | None = Field(None, description="Hits of `query`.")
    batches: list[list[Hit]] | None = Field(None, description="Hits of each of `queries`.")
    corrected: bool = Field(description="Whether the corrected space was searched.")
    transform: str | None = Field(description="Method of the transform used, if any.")


# ---------------------------------------------------------------------------- transform / gap
class TransformRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"method": "auto", "params": {}, "objective": "balanced"}]},
    )
    method: Method = Field(description="Transform method (auto picks one by validation).")
    params: dict[str, Any] = Field(default_factory=dict, description="Method parameters.")
    objective: Objective | None = Field(None, description="auto's objective (default balanced).")
    wait_seconds: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=60,
        description="Wait this long for 'active' (default: server setting).",
    )


class TransformInfo(BaseModel):
    status: Literal["active", "rebuilding", "failed"]
    error: str | None
    job: dict[str, Any] | None = Field(description="The running rebuild, if any.")
    fingerprint: str | None = Field(description="Content hash of the active transform.")
    active: dict[str, Any] = Field(
        description="The active transform: method, params, dim, fit_stats, fit_table (auto)."
    )


class GapResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    collection: str
    counts: dict[str, int]
    paired: bool
    sampled: bool
    rows: dict[str, int]
    transform: str | None
    centroid_gap: dict[str, float | None]
    raw: dict[str, Any] | None
    corrected: dict[str, Any] | None
    note: str | None = None
    pca: dict[str, Any] | None = Field(None, description="2-D PCA of raw/corrected (?pca=true).")


# ---------------------------------------------------------------------------- health
class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str | None
    dim: int | None
    vectors_mode: bool
    collections: dict[str, Any]
    problems: list[str]


class Info(BaseModel):
    version: str
    model: str | None = Field(description="Model id; null in vectors mode.")
    dim: int | None
    vectors_mode: bool
    auth: dict[str, bool] = Field(description="Whether writes / reads need an API key.")
    limits: dict[str, int]
