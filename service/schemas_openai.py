"""Request and response models of the OpenAI-compatible routes (``/v1/embeddings``,
``/v1/models``), in OpenAI's own field names; gapfix's extras arrive through ``extra_body``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.schemas import CollectionName, Role, TransformName

TokenIds = list[StrictInt]


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request plus ``modality``, ``transform``/``collection``, ``role``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "ViT-B-32/laion2b_s34b_b79k", "input": ["a dog on a beach"]},
                {
                    "model": "ViT-B-32/laion2b_s34b_b79k",
                    "input": ["data:image/png;base64,iVBORw0KGgo..."],
                    "modality": "image",
                    "transform": "coco",
                    "encoding_format": "base64",
                },
            ]
        },
    )
    model: StrictStr = Field(description="The served model id (GET /v1/models).")
    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="A string or a list of strings (texts, or image URIs with modality image)."
        " Token arrays are refused: this server tokenizes with the model's own tokenizer."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes per embedding."
    )
    dimensions: StrictInt | None = Field(None, description="Only the model's own dimension.")
    user: StrictStr | None = Field(None, description="Ignored.")
    modality: Literal["text", "image"] = Field(
        "text", description="image: each input is a data:image/...;base64, URI or a URL."
    )
    transform: TransformName | None = Field(
        None,
        description="A named transform to apply (default: GAPFIX_DEFAULT_TRANSFORM; an "
        "explicit null: none).",
    )
    collection: CollectionName | None = Field(
        None, description="Apply this collection's active transform instead."
    )
    role: Role = Field("document", description="query: texts get the query-text mean.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 float32 bytes.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error.")
    param: str | None
    code: str | None = Field(description="e.g. model_not_found, invalid_api_key.")


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
