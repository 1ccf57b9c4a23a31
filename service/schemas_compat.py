"""Request and response models of the Hugging Face TEI (``/embed``, ``/info``) and Weaviate
multi2vec-clip (``/vectorize``, ``/meta``) contracts, in those servers' own field names.

Unknown fields are ignored, as TEI (serde) and the multi2vec-clip container do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class TEIEmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"inputs": "What is Deep Learning?"}]},
    )
    inputs: StrictStr | list[StrictStr] = Field(description="A string or a list of strings.")
    normalize: StrictBool = Field(
        True, description="Accepted; gapfix's vectors are always unit length."
    )
    truncate: StrictBool | None = Field(
        None, description="Accepted; texts are always cut to the model's context (auto_truncate)."
    )
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = Field(
        None, description="Only right (the CLIP tokenizer keeps the start)."
    )
    prompt_name: StrictStr | None = Field(None, description="Not supported (must be null).")
    dimensions: StrictInt | None = Field(None, description="Only the model's own dimension.")


class TEIEmbeddingModel(BaseModel):
    pooling: str


class TEIModelType(BaseModel):
    embedding: TEIEmbeddingModel


class TEIInfo(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: TEIModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


class TEIError(BaseModel):
    error: str
    error_type: str


class VectorizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"texts": ["a dog on a beach"], "images": []}]},
    )
    texts: list[StrictStr] | None = Field(None, description="Texts (null: none).")
    images: list[StrictStr] | None = Field(None, description="Base64 images (null: none).")


class VectorizeResponse(BaseModel):
    textVectors: list[list[float]]
    imageVectors: list[list[float]]


class VectorizeError(BaseModel):
    error: str


class WeaviateMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None
    dim: int | None
    transform: dict[str, Any] | None
    gapfix_version: str
