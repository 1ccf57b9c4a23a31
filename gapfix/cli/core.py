"""Core commands: `gapfix stats`, `fit`, `apply`, `eval` (a contract other tools rely on)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gapfix.atomic import atomic_path
from gapfix.blocks import iter_blocks
from gapfix.cli import fit_report
from gapfix.cli._app import app, guarded
from gapfix.errors import InputError
from gapfix.io import load_array
from gapfix.validation import check_embeddings, check_modality

ImageOpt = Annotated[
    str, typer.Option("--image", help="Image embeddings: X.npy, F.npz:key or F.parquet:col")
]
TextOpt = Annotated[str, typer.Option("--text", help="Text embeddings (same formats)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
GroupsOpt = Annotated[
    str | None,
    typer.Option(
        "--groups",
        help="Fairness: a group label per image row; --text holds one row per class",
    ),
]
HarmfulOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--harmful",
        help="Class indices counted harmful: 'i,j', 'NAME=i,j' or a file (repeatable, "
        "one category each)",
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels", help="Integer class per image row; --text then holds one row per class"
    ),
]

console = Console(width=None if sys.stdout.isatty() else 140)


def _load_pair(image: str, text: str) -> tuple[np.ndarray, np.ndarray]:
    x = check_embeddings(load_array(image, param="--image"), "--image", min_rows=2)
    y = check_embeddings(load_array(text, param="--text"), "--text", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"--image has dimension {x.shape[1]} but --text has {y.shape[1]}", "--text"
        )
    return x, y


def _load_labels(spec: str | None) -> np.ndarray | None:
    if spec is None:
        return None
    return np.asarray(load_array(spec, param="--labels"))


@app.command()
@guarded
def stats(
    image: ImageOpt,
    text: TextOpt,
    paired: Annotated[
        bool, typer.Option("--paired", help="Row i of image <-> row i of text")
    ] = False,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the 2-D PCA picture (PNG)")
    ] = None,
) -> None:
    """Measure the modality gap: centroid gap, cone effect, separability, gap dimensions."""
    from gapfix.stats import gap_statistics, plot_gap

    x, y = _load_pair(image, text)
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {plot}", "--plot")
    result = gap_statistics(x, y, paired=paired)
    if plot is not None:
        plot_gap(x, y, str(plot), paired=paired)
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title="Modality gap statistics", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("rows (image / text)", f"{result['n_image']} / {result['n_text']}"),
        ("dimension", result["dim"]),
        ("centroid gap ||muX - muY||", f"{result['centroid_gap']:.4f}"),
        ("cosine between centroids", f"{result['centroid_cosine']:.4f}"),
        ("cone: mean cosine, image", f"{result['cone_image']['mean_cosine']:.4f}"),
        ("cone: mean cosine, text", f"{result['cone_text']['mean_cosine']:.4f}"),
        ("linear separability (held-out acc.)", _fmt(result["separability"]["accuracy"])),
        (
            f"gap share of top {len(result['gap_dimensions']['top_dims'])} dims",
            f"{result['gap_dimensions']['top_k_share']:.3f} (dims {result['gap_dimensions']['top_dims'][:5]}...)",
        ),
        (
            "dims for 50% / 90% of gap^2",
            f"{result['gap_dimensions']['dims_for_50pct']} / {result['gap_dimensions']['dims_for_90pct']}",
        ),
    ]
    if "paired" in result:
        p = result["paired"]
        rows += [
            ("mean paired cosine", f"{p['mean_paired_cosine']:.4f}"),
            ("alignment E||x-y||^2", f"{p['alignment']:.4f}"),
            (
                "uniformity image / text",
                f"{p['uniformity_image']:.4f} / {p['uniformity_text']:.4f}",
            ),
            ("relative modality gap", f"{p['relative_modality_gap']:.4f}"),
        ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
@guarded
def fit(
    out: Annotated[Path, typer.Option("--out", help="Artifact file to write")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="identity, mean-shift, target-gap, centering, standardize, whiten, ablate-dims, "
            "procrustes, contrastive-adapter, auto",
        ),
    ],
    image: Annotated[str | None, typer.Option("--image", help="Image embeddings")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Text embeddings")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Method parameter k=v (repeatable)")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="auto only: balanced, retrieval, mixed, zeroshot, fair"),
    ] = None,
    labels: LabelsOpt = None,
    groups: GroupsOpt = None,
    harmful: HarmfulOpt = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Stream-fit from `gapfix embed` shards")
    ] = None,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="Record the embedding model")
    ] = None,
    query_text: Annotated[
        str | None,
        typer.Option(
            "--query-text",
            help="Query-text embeddings: centering with --param query_text_mean=true learns "
            "their own mean (apply with --role query)",
        ),
    ] = None,
) -> None:
    """Fit a gap-closing transform on calibration embeddings and save it as one file."""
    from gapfix.transforms import make_transform, parse_params

    params: dict[str, Any] = dict(parse_params(param))
    if objective is not None:
        if method != "auto":
            raise InputError("--objective applies to --method auto only", "--objective")
        params["objective"] = objective
    transform = make_transform(method, **params)
    if (query_text is not None) != bool(getattr(transform, "query_text_mean", False)):
        raise InputError(
            "--query-text goes with --method centering --param query_text_mean=true",
            "--query-text",
        )
    if manifest is not None:
        if image or text or labels or query_text or groups or harmful:
            raise InputError("--manifest replaces --image/--text/--labels", "--manifest")
        from gapfix.jobs.manifest import require_complete
        from gapfix.jobs.shards import iter_embedding_blocks, iter_paired_blocks, read_manifest

        info = read_manifest(manifest)
        require_complete(info, manifest)  # a fit on part of the shards would be silently off
        model_id = model_id or info.get("model_id")
        if method == "auto":
            raise InputError(
                "--method auto cross-validates in memory; export a sample with --image/--text "
                "or stream-fit a named method from --manifest",
                "--method",
            )
        if transform.requires_pairs:  # only ids with both an image and a caption take part
            for img_block, txt_block in iter_paired_blocks(manifest):
                transform.partial_fit(image=img_block, text=txt_block)
        else:
            for modality in ("image", "text"):
                for block in iter_embedding_blocks(manifest, modality):
                    transform.partial_fit(**{modality: block})
        transform.finalize()
    else:
        if image is None or text is None:
            raise InputError("fit needs --image and --text (or --manifest)", "--image")
        x, y = _load_pair(image, text)
        lab = _load_labels(labels)
        fair: dict[str, Any] = {}
        if groups is not None or harmful:
            from gapfix.cli._fairness import check_audit_options, load_groups
            from gapfix.fairness import parse_harmful

            check_audit_options(groups, harmful)
            if method != "auto":
                raise InputError(
                    "--groups/--harmful are for --method auto --objective fair", "--groups"
                )
            fair = {
                "groups": load_groups(groups),
                "harmful": parse_harmful(list(harmful or []), y.shape[0]),
            }
        if lab is not None and method not in ("auto", "contrastive-adapter"):
            raise InputError(
                "--labels is used by --method auto --objective zeroshot and by "
                "--method contrastive-adapter (labelled calibration)",
                "--labels",
            )
        if query_text is not None:
            q = check_embeddings(
                load_array(query_text, param="--query-text"), "--query-text", min_rows=2,
                dim=x.shape[1],
            )  # fmt: skip
            transform.fit(x, y, query_text=q)
        else:
            transform.fit(x, y, labels=lab, **fair)
    transform.save(out, model_id=model_id)
    st = transform.fit_stats_
    if method == "auto":
        fit_report.print_fit_table(console, transform.fit_table_, st["rule"])
    if "adapter" in st:
        a = st["adapter"]
        console.print(
            f"trained on {a['mode']} ({a['train_rows']} rows, {a['val_rows']} held out): best "
            f"epoch {a['best_epoch']} of {a['epochs_run']}, {a['train_seconds']:.1f}s on {a['device']}"
        )
    console.print(
        f"[bold]{transform.method}[/bold] -> {out}: gap {st['gap_before']:.4f} -> "
        f"{st['gap_after']:.4f} in-sample (image rows {st['n_image']}, text rows "
        f"{st['n_text']}, dim {st['dim']})"
    )
    warnings = list(st.get("warnings", []))
    if manifest is None and labels is None and query_text is None and x.shape[0] == y.shape[0]:
        warnings += _report_out_of_fold(transform, method, x, y)
    for line in warnings:
        console.print(f"[yellow]warning:[/yellow] {line}")


def _report_out_of_fold(transform: Any, method: str, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Print in-sample beside out-of-fold figures; return warnings for degenerate fits."""
    x, y = fit_report.sample_pairs(x, y)
    in_sample = fit_report.paired_figures(x, y, transform)
    if method == "auto":
        st = transform.fit_stats_
        raw, fitted = st["out_of_fold_identity"], st["out_of_fold"]
        how = f"auto's {st['folds']}-fold cross-validation x {st['repeats']} (the chosen row)"
        fit_report.print_figures(console, in_sample, raw, fitted, how)
        return []  # auto's degenerate candidates are in fit_stats_["warnings"]
    params = {k: v for k, v in transform.get_params().items() if k != "renormalize"}
    raw, fitted, k = fit_report.out_of_fold(method, params, x, y, transform.renormalize)
    how = f"{k}-fold cross-validation x {fit_report.NAMED_REPEATS}"
    fit_report.print_figures(console, in_sample, raw, fitted, how)
    lines = fit_report.below_raw(raw, fitted, 0.01)
    return [f"{method} scores below raw: " + "; ".join(lines)] if lines else []


@app.command()
@guarded
def apply(
    transform: Annotated[
        Path, typer.Option("--transform", help="Artifact written by `gapfix fit`")
    ],
    modality: Annotated[str, typer.Option("--modality", help="image or text")],
    input: Annotated[str, typer.Option("--input", help="Embeddings to correct")],
    output: Annotated[Path, typer.Option("--output", help="Corrected embeddings (.npy)")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="corpus, or query: text queries get the query-text mean (fit --query-text)",
        ),
    ] = "corpus",
) -> None:
    """Correct embeddings with a saved transform (streams .npy input; atomic output)."""
    from gapfix.transforms.artifact import load_transform

    check_modality(modality, "--modality")
    if role not in ("corpus", "query"):
        raise InputError(f"--role must be 'corpus' or 'query', got {role!r}", "--role")
    if output.suffix.lower() != ".npy":
        raise InputError(f"--output must be a .npy file, got {output}", "--output")
    t = load_transform(transform)
    z = load_array(input, mmap=True, param="--input")
    z = check_embeddings(z, "--input", min_rows=1, convert=False)  # stays memory-mapped
    if z.shape[1] != t.dim_:
        raise InputError(
            f"--input has dimension {z.shape[1]} but the transform was fitted on dimension {t.dim_}",
            "--input",
        )
    with atomic_path(output) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=z.shape)
        for sl in iter_blocks(z.shape[0], 65_536):
            t.transform(z[sl], modality, out=out[sl], role=role)
        out.flush()
        del out
    console.print(f"{z.shape[0]} {modality} rows corrected with {t.method} -> {output}")


@app.command("eval")
@guarded
def evaluate_cmd(
    image: ImageOpt,
    text: TextOpt,
    transform: Annotated[
        Path | None, typer.Option("--transform", help="Artifact to evaluate")
    ] = None,
    labels: LabelsOpt = None,
    groups: GroupsOpt = None,
    harmful: HarmfulOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieval quality before/after a transform: cross-modal, mixed-modality, zero-shot;
    with --groups/--harmful, the fairness audit (harmful-label rate per group)."""
    from gapfix.cli._fairness import check_audit_options, load_groups, print_audit
    from gapfix.evaluation import evaluate, flatten_metrics
    from gapfix.fairness import fairness_audit, parse_harmful
    from gapfix.transforms.artifact import load_transform

    check_audit_options(groups, harmful)
    x, y = _load_pair(image, text)
    lab = _load_labels(labels)
    audit_inputs = None
    if groups is not None:
        audit_inputs = (load_groups(groups), parse_harmful(list(harmful or []), y.shape[0]))
    t = load_transform(transform) if transform is not None else None
    if t is not None and t.dim_ != x.shape[1]:
        raise InputError(
            f"embeddings have dimension {x.shape[1]} but the transform was fitted on {t.dim_}",
            "--transform",
        )
    if audit_inputs is not None:
        audit = fairness_audit(x, y, audit_inputs[0], audit_inputs[1], transform=t, labels=lab)
        result = evaluate(x, y, transform=t, labels=lab) if lab is not None else {}
        result["fairness"] = audit
        if as_json:
            typer.echo(json.dumps(result))
            return
        print_audit(console, audit, t.method if t else None)
        if lab is None:
            return
    else:
        result = evaluate(x, y, transform=t, labels=lab)
    if as_json:
        typer.echo(json.dumps(result))
        return
    raw = flatten_metrics(result["raw"])
    corrected = flatten_metrics(result.get("corrected", {}))
    table = Table(title=f"Evaluation ({result['n_image']} image / {result['n_text']} text rows)")
    table.add_column("metric")
    table.add_column("raw")
    if corrected:
        table.add_column(f"corrected ({t.method if t else ''})")
        table.add_column("change")
    for key, value in raw.items():
        row = [key, f"{value:.4f}"]
        if corrected:
            row += [f"{corrected[key]:.4f}", f"{corrected[key] - value:+.4f}"]
        table.add_row(*row)
    console.print(table)
