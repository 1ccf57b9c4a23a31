"""Service configuration: pydantic-settings, every field also a ``GAPFIX_<NAME>`` variable.

``gapfix serve --model/--pretrained/--data-dir/--host/--port`` set the matching variables
before the app is built, so flags override the environment.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gapfix.errors import InputError
from service.url_guard import AllowList

log = logging.getLogger("gapfix.service")

VECTORS_MODE_MODELS = ("none", "")


class Settings(BaseSettings):
    """Settings of the HTTP service (env prefix ``GAPFIX_``)."""

    model_config = SettingsConfigDict(
        env_prefix="GAPFIX_", extra="ignore", protected_namespaces=(), frozen=False
    )

    model: str = Field("ViT-B-32", description="open_clip model; 'none' = vectors mode")
    pretrained: str = Field("laion2b_s34b_b79k", description="weights tag, path or 'none'")
    data_dir: Path = Field(Path("data"), description="collections live here (embedded store)")
    store: str = Field(
        "embedded",
        description="'embedded' (SQLite + FAISS in data_dir) or milvus://HOST:PORT[/db]",
    )
    milvus_token: str = Field("", description="Milvus token ('user:password' or an API key)")
    milvus_secure: bool = Field(False, description="TLS to Milvus (https)")
    milvus_server_pem_path: str = Field("", description="Milvus server certificate (one-way TLS)")
    milvus_server_name: str = Field("", description="TLS server name of Milvus")
    milvus_ca_pem_path: str = Field("", description="CA certificate (two-way TLS)")
    milvus_client_pem_path: str = Field("", description="client certificate (two-way TLS)")
    milvus_client_key_path: str = Field("", description="client key (two-way TLS)")
    milvus_timeout_s: float = Field(10.0, gt=0, description="Milvus connect/request timeout")
    milvus_refresh_s: float = Field(
        1.0, ge=0, description="reads re-read a collection's state from Milvus this often"
    )
    milvus_switch_batch: int = Field(
        512, ge=1, le=16384, description="items re-corrected per batch in a transform switch"
    )
    milvus_replica_id: str = Field(
        "",
        max_length=128,
        description="this replica's name for its row of count and sum changes in Milvus "
        "(default: the host name and a random suffix per start; a stable name reuses one row)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: str = "auto"
    precision: str = Field(
        "auto", description="auto, fp32, fp16, bf16 (fp16/bf16: the weights, GPU only)"
    )
    backend: str = Field(
        "torch",
        description="encoder backend: torch (eager), onnx (ONNX Runtime, CPU; towers exported "
        "once into <model_cache or ~/.cache/gapfix>/onnx) or compile (torch.compile)",
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="inputs per model call")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="micro-batch max wait")
    api_keys: str = Field("", description="comma-separated API keys (Authorization: Bearer)")
    api_keys_file: Path | None = Field(None, description="file with one API key per line")
    protect_reads: bool = Field(False, description="require a key for reads too")
    cors_origins: str = Field("", description="comma-separated origins; empty = CORS off")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_texts_per_request: int = Field(256, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="an image fetched by URL is cut off past this"
    )
    url_allow: str = Field(
        "",
        description="image URLs allowed although they resolve to a non-public address: "
        "comma-separated host, host:port, *.domain, IP, IP:port or CIDR (see service/url_guard.py)",
    )
    url_fetch_concurrency: int = Field(8, ge=1, le=1024, description="image URL fetches at once")
    url_timeout_s: float = Field(10.0, gt=0, le=300, description="URL connect and read timeout")
    url_total_timeout_s: float = Field(30.0, gt=0, le=3600, description="one URL, all hops")
    max_queries_per_request: int = Field(1024, ge=1)
    max_k: int = Field(1000, ge=1, le=1000)
    model_cache: Path | None = Field(None, description="open_clip / Hugging Face cache dir")
    torch_threads: int | None = Field(None, ge=1)
    thumbnail_size: int = Field(256, ge=16, le=1024, description="longest side, pixels")
    transform_wait_s: float = Field(
        5.0, ge=0, description="how long POST .../transform waits before answering 202"
    )
    flush_interval_s: float = Field(30.0, gt=0, description="index files flushed this often")
    default_transform: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="named transform applied where a caller cannot name one (TEI /embed,"
        " Weaviate /vectorize, /v1/embeddings without `transform`)",
    )
    faiss_blas_threshold: int = Field(
        16_384,
        ge=1,
        description="FAISS uses BLAS for flat search when nq * dim >= this (FAISS default 128000;"
        " lower is faster for the batched queries the service merges)",
    )

    search_batch_rows: int = Field(
        1024, ge=1, le=65536, description="query rows per merged FAISS call at most"
    )
    search_wait_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="a search lane waits at most this long (and at most a quarter of a recent "
        "FAISS call's duration) to gather as many requests as its recent bursts; a lone client "
        "never waits",
    )
    queue_max_rows: int = Field(
        4096,
        ge=1,
        description="rows (queries, texts, images) waiting per batcher (search, encode) at most;"
        " beyond: 429",
    )
    queue_budget_ms: float = Field(
        1000.0,
        gt=0,
        description="a request whose estimated wait in a batcher's queue exceeds this is "
        "refused at once (429 with Retry-After)",
    )
    timeout_keep_alive_s: float = Field(
        120.0,
        gt=0,
        description="idle keep-alive connections are closed after this long; longer than "
        "client pools keep them idle (httpx 5 s, aiohttp 15 s, Go 90 s)",
    )
    access_log: bool = Field(False, description="log every request (uvicorn access log)")

    @field_validator("model", "pretrained", "device", "precision", mode="before")
    @classmethod
    def _strip(cls, v: object) -> object:
        return v.strip() if isinstance(v, str) else v

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        from gapfix.encoders.backends import check_backend  # torch-free module

        return check_backend(v)

    @field_validator("url_allow")
    @classmethod
    def _check_allow(cls, v: str) -> str:
        AllowList.parse(v)  # a bad entry stops start-up, naming it
        return v

    @field_validator("default_transform", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("store", mode="after")
    @classmethod
    def _check_store(cls, v: str) -> str:
        v = v.strip()
        if v != "embedded":
            from gapfix.store.milvus.conn import parse_store_uri

            try:
                parse_store_uri(v)
            except InputError as exc:
                raise ValueError(exc.message) from None
        return v

    def open_store(self) -> Any:
        """The configured store: ``Store(data_dir)`` or a ``MilvusStore``."""
        if self.store == "embedded":
            from gapfix.store import Store

            return Store(self.data_dir, flush_interval=self.flush_interval_s)
        from gapfix.store.milvus import MilvusStore, parse_store_uri

        return MilvusStore(
            parse_store_uri(self.store, self.milvus_secure),
            token=self.milvus_token,
            timeout=self.milvus_timeout_s,
            refresh_s=self.milvus_refresh_s,
            switch_batch=self.milvus_switch_batch,
            replica=self.milvus_replica_id,
            server_pem_path=self.milvus_server_pem_path,
            server_name=self.milvus_server_name,
            ca_pem_path=self.milvus_ca_pem_path,
            client_pem_path=self.milvus_client_pem_path,
            client_key_path=self.milvus_client_key_path,
        )

    @property
    def vectors_mode(self) -> bool:
        """True when no model is loaded (clients send embeddings)."""
        return self.model.lower() in VECTORS_MODE_MODELS

    @cached_property
    def keys(self) -> frozenset[str]:
        """All configured API keys (from ``api_keys`` and ``api_keys_file``)."""
        keys = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_keys_file is not None:
            text = Path(self.api_keys_file).read_text()
            keys |= {
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")
            }
        return frozenset(keys)

    @property
    def origins(self) -> list[str]:
        """CORS origins (empty: CORS middleware not installed)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
