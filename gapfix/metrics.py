"""Prometheus metrics (prometheus-client) observed by the library and exposed by the service.

Names are a contract: the Grafana dashboard in deploy/ uses them, and a test checks that every
metric the dashboard queries is present at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

HTTP_REQUESTS = Counter(
    "gapfix_http_requests_total",
    "HTTP requests by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "gapfix_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "gapfix_stage_duration_seconds",
    "Latency of pipeline stages: encode_pre, encode_core, encode_post, correct, search.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
ENCODE_BATCH_SIZE = Histogram(
    "gapfix_encode_batch_size",
    "Number of inputs per model forward pass.",
    ["modality"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COLLECTION_ITEMS = Gauge(
    "gapfix_collection_items",
    "Items stored per collection and modality.",
    ["collection", "modality"],
)
COLLECTION_GAP = Gauge(
    "gapfix_collection_gap",
    "Centroid modality gap per collection, raw and corrected.",
    ["collection", "space"],
)
TRANSFORM_GAP = Gauge(
    "gapfix_transform_gap",
    "Centroid modality gap of each named transform's calibration data, before (raw) and after"
    " (corrected) the transform.",
    ["transform", "space"],
)
QUEUE_DEPTH = Gauge(
    "gapfix_queue_depth",
    "Rows waiting in the batchers by stage: search, text, image (queued for a batched call) "
    "and text_pre, image_pre (requests in their pre stage).",
    ["stage"],
)
BATCH_ROWS = Histogram(
    "gapfix_batch_rows",
    "Rows per batched core call (FAISS search, model forward) by stage.",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
