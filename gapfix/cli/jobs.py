"""Batch job commands: ``gapfix embed``, ``gapfix correct``, ``gapfix index build``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from gapfix.cli._app import app, guarded
from gapfix.jobs.sinks import SINK_BATCH

index_app = typer.Typer(
    help="Build search collections from embedding shards.", no_args_is_help=True
)
app.add_typer(index_app, name="index")

_RAY_HELP = "Run on Ray Data: 'local' starts a local Ray instance, else a cluster address."
_PROGRESS_HELP = "auto (bar on a terminal, log lines otherwise), bar, log or off."


def _print_json(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
@guarded
def embed(
    input: str = typer.Argument(
        ...,
        help="Image folder (recursive), CSV/TSV/parquet table (id, image, caption/text), or "
        "WebDataset .tar shards (a file, a folder of .tar, or a brace pattern).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (shards + manifest.json)."),
    model: str = typer.Option("ViT-B-32", "--model", help="open_clip architecture."),
    pretrained: str = typer.Option(
        "laion2b_s34b_b79k", "--pretrained", help="Weights tag, hf-hub: id, checkpoint or none."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Items per model batch."),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Decode workers (local; default cores-1) or model actors (Ray; default #GPUs or 1).",
    ),
    shard_size: int = typer.Option(
        10_000, "--shard-size", help="Input items per output shard (tar inputs: one per tar)."
    ),
    max_pixels: int = typer.Option(
        40_000_000, "--max-pixels", help="Skip images with more pixels than this."
    ),
    thumbnails: int = typer.Option(
        0,
        "--thumbnails",
        help="Also keep a JPEG thumbnail of each image, this many pixels on its longest side "
        "(0: none); `index build` hands them to the store for the search page.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, fp32, fp16, bf16 (fp16/bf16 weights: GPU only)."
    ),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="Encoder backend: torch, onnx (ONNX Runtime, CPU) or compile (torch.compile).",
    ),
    exact_decode: bool = typer.Option(
        False,
        "--exact-decode",
        help="Decode JPEGs at full size (default: at a reduced scale no smaller than the "
        "model's input, several times faster for large photos; vectors within ~1e-3 cosine).",
    ),
    ray: str = typer.Option(None, "--ray", help=_RAY_HELP),
    progress: str = typer.Option("auto", "--progress", help=_PROGRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed images and captions into resumable parquet shards with a manifest."""
    from gapfix.jobs.embed import EmbedOptions, run_embed

    opts = EmbedOptions(
        model=model,
        pretrained=pretrained,
        batch_size=batch_size,
        workers=workers,
        shard_size=shard_size,
        max_pixels=max_pixels,
        thumbnail_size=thumbnails,
        device=device,
        precision=precision,
        backend=backend,
        exact_decode=exact_decode,
        ray=ray,
        progress=progress,
    )
    summary = run_embed(input, out, opts)
    if as_json:
        _print_json(summary)


@app.command()
@guarded
def correct(
    manifest: Path = typer.Option(..., "--manifest", help="manifest.json of an embed job."),
    transform: Path = typer.Option(..., "--transform", help="Transform artifact (gapfix fit)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Output folder for the corrected shards; with --sink, for the job's manifest and "
        "failures.jsonl (default: <input folder>/sinks/<sink>).",
    ),
    sink: str = typer.Option(
        None,
        "--sink",
        help="Upsert raw and corrected vectors into a database instead of writing shards: "
        "milvus://HOST:PORT/COLLECTION, qdrant://HOST:PORT/COLLECTION or "
        "qdrant+local:///FOLDER/COLLECTION.",
    ),
    sink_batch: int = typer.Option(SINK_BATCH, "--sink-batch", help="Rows per upsert request."),
    ray: str = typer.Option(None, "--ray", help=_RAY_HELP),
    workers: int = typer.Option(None, "--workers", help="Transform actors on Ray (default 1)."),
    progress: str = typer.Option("auto", "--progress", help=_PROGRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Re-correct embedding shards with a transform (no re-encoding), into new shards or a
    Milvus/Qdrant collection; resumable."""
    from gapfix.jobs.correct import run_correct

    summary = run_correct(
        manifest, transform, out, sink=sink, sink_batch=sink_batch, ray=ray, workers=workers,
        progress_mode=progress,
    )  # fmt: skip
    if as_json:
        _print_json(summary)


@index_app.command("build")
@guarded
def index_build(
    manifest: Path = typer.Option(..., "--manifest", help="manifest.json of an embed job."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Data directory of the embedded store (gapfix serve --data-dir)."
    ),
    store: str = typer.Option(
        "embedded",
        "--store",
        envvar="GAPFIX_STORE",
        help="'embedded' (in --data-dir) or milvus://HOST:PORT[/db] (gapfix serve --store; "
        "token and TLS from GAPFIX_MILVUS_TOKEN / GAPFIX_MILVUS_SECURE).",
    ),
    milvus_token: str = typer.Option("", envvar="GAPFIX_MILVUS_TOKEN", hidden=True),
    milvus_secure: bool = typer.Option(False, envvar="GAPFIX_MILVUS_SECURE", hidden=True),
    collection: str = typer.Option(..., "--collection", help="Collection name."),
    index: str = typer.Option("flat", "--index", help="flat, hnsw or ivfpq."),
    transform: Path = typer.Option(
        None, "--transform", help="Transform artifact to activate on the collection."
    ),
    pairs: str = typer.Option(
        "document",
        "--pairs",
        help="Rows with an image and a text under one id: 'document' (one fused item) or "
        "'split' (items ID#image and ID#text).",
    ),
    weight: float = typer.Option(0.5, "--weight", help="Image weight of document items."),
    upsert: bool = typer.Option(
        False, "--upsert", help="Add to an existing collection, replacing equal ids."
    ),
    progress: str = typer.Option("auto", "--progress", help=_PROGRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Turn embedding shards into a collection that `gapfix serve` serves (--data-dir or
    --store)."""
    from gapfix.jobs.index import build_index

    summary = build_index(
        manifest,
        data_dir,
        collection,
        store=store.strip() or "embedded",
        milvus_token=milvus_token,
        milvus_secure=milvus_secure,
        index=index,
        transform=transform,
        pairs=pairs,
        weight=weight,
        upsert=upsert,
        progress_mode=progress,
    )
    if as_json:
        _print_json(summary)
