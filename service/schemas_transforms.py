"""Request and response models of the named-transform routes (``/v1/transforms``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas import CollectionName, Method, Objective, TransformName, Vector


class TransformFit(BaseModel):
    """Fit a transform from posted calibration vectors, or snapshot a collection's."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "coco", "method": "auto", "image": [[0.1, 0.2]], "text": [[0.2, 0.1]]},
                {"name": "photos-v1", "from_collection": "photos"},
            ]
        },
    )
    name: TransformName
    method: Method | None = Field(None, description="Transform method (not with from_collection).")
    params: dict[str, Any] = Field(default_factory=dict, description="Method parameters.")
    objective: Objective | None = Field(None, description="auto's objective (default balanced).")
    image: list[Vector] | None = Field(None, description="Image calibration vectors (rows).")
    text: list[Vector] | None = Field(None, description="Text calibration vectors (rows).")
    query_text: list[Vector] | None = Field(
        None, description="Query-text rows (centering with params.query_text_mean=true)."
    )
    labels: list[int] | None = Field(
        None, description="Zero-shot class per image row (objective zeroshot)."
    )
    from_collection: CollectionName | None = Field(
        None, description="Snapshot this collection's active transform under `name`."
    )
    replace: bool = Field(False, description="Replace an existing transform of this name.")
    wait_seconds: float | None = Field(
        None, ge=0, le=60, description="Wait this long for the fit (default: server setting)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> TransformFit:
        given = (self.method, self.image, self.text, self.labels, self.query_text)
        fitting = any(v is not None for v in given)
        if self.from_collection is not None:
            if fitting or self.params or self.objective is not None:
                raise ValueError("`from_collection` takes no method, params, vectors or labels")
        elif self.method is None or self.image is None or self.text is None:
            raise ValueError("give `method`, `image` and `text` (or `from_collection`)")
        return self


class NamedTransformInfo(BaseModel):
    """A named transform; while a fit runs or after it failed, ``status`` says so."""

    model_config = ConfigDict(extra="allow")
    name: str
    status: Literal["ready", "fitting", "failed"]
    fingerprint: str | None = Field(None, description="Content hash of the artifact.")
    method: str | None = None
    params: dict[str, Any] | None = None
    dim: int | None = None
    model: str | None = Field(None, description="Model id recorded in the artifact.")
    fit_stats: dict[str, Any] | None = Field(None, description="gap_before, gap_after, counts.")
    created: float | None = Field(None, description="When this content was registered (Unix).")
    job: dict[str, Any] | None = Field(None, description="The running or failed fit.")
    error: str | None = None


class NamedTransformList(BaseModel):
    transforms: list[NamedTransformInfo]
