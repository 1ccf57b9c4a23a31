"""What `gapfix fit` prints: the auto table (mean ± SE), in-sample and out-of-fold figures."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPORT_METRICS = ("gap", "t2i_R@1", "i2t_R@1", "mixed_R@10")
# out-of-fold figures of a named method: 2-fold x 2, as `auto` splits (its reasons: README)
NAMED_FOLDS = 2
NAMED_REPEATS = 2
REPORT_ROWS = 5000  # the figures use at most this many calibration pairs (a random sample)


def print_fit_table(console: Console, rows: list[dict[str, Any]], rule: str) -> None:
    """auto's cross-validated candidates: each metric as mean ± standard error."""
    metrics = [m for m in rows[0] if f"{m}_se" in rows[0] and not m.endswith("_diff")]
    table = Table(title="auto: cross-validated candidates (mean ± standard error over folds)")
    for col in ["method", "params", *metrics, "admissible", "chosen"]:
        table.add_column(col)
    for r in rows:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items())
        cells = [f"{r[m]:.3f} ± {_num(r[f'{m}_se']):.3f}" for m in metrics]
        table.add_row(
            r["method"], params, *cells,
            "yes" if r.get("admissible") else "no", "<<" if r.get("chosen") else "",
        )  # fmt: skip
    console.print(table)
    console.print(f"decided by: {rule}")


def sample_pairs(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``REPORT_ROWS`` random pairs: search over all n pairs costs n^2."""
    if image.shape[0] <= REPORT_ROWS:
        return image, text
    idx = np.sort(np.random.default_rng(0).choice(image.shape[0], REPORT_ROWS, replace=False))
    return image[idx], text[idx]


def paired_figures(image: np.ndarray, text: np.ndarray, transform: Any) -> dict[str, dict]:
    """In-sample raw and fitted figures on the calibration pairs themselves."""
    from gapfix.evaluation import evaluate

    e = evaluate(image, text, transform)
    return {name: _flat(e[name]) for name in ("raw", "corrected")}


def out_of_fold(
    method: str, params: dict[str, Any], image: np.ndarray, text: np.ndarray, renormalize: bool
) -> tuple[dict[str, float], dict[str, float], int]:
    """Held-out figures of a named method and of identity (2-fold cross-validation x 2)."""
    from gapfix.transforms import crossval

    k = min(NAMED_FOLDS, image.shape[0] // 2)
    scores, _, ratio = crossval.cross_validate(
        [("identity", {}), (method, params)], image, text, folds=k, repeats=NAMED_REPEATS,
        renormalize=renormalize,
    )  # fmt: skip
    base = crossval.summarize(scores[0], scores[0], ratio)
    fitted = crossval.summarize(scores[1], scores[0], ratio)
    return base, fitted, k


def print_figures(
    console: Console,
    in_sample: dict[str, dict[str, float]],
    oof_raw: dict[str, float],
    oof_fit: dict[str, float],
    how: str,
) -> None:
    """The in-sample and out-of-fold figures side by side, each labelled."""
    table = Table(title="fit figures: in-sample (optimistic) beside out-of-fold (unseen pairs)")
    table.add_column("figures")
    for m in REPORT_METRICS:
        table.add_column(m)
    table.add_row("in-sample, raw", *[f"{in_sample['raw'][m]:.3f}" for m in REPORT_METRICS])
    table.add_row(
        "in-sample, fitted", *[f"{in_sample['corrected'][m]:.3f}" for m in REPORT_METRICS]
    )
    table.add_row("out-of-fold, raw", *[_cell(oof_raw, m) for m in REPORT_METRICS])
    table.add_row("out-of-fold, fitted", *[_cell(oof_fit, m) for m in REPORT_METRICS])
    console.print(table)
    console.print(
        "in-sample: fitted and scored on the same calibration pairs. out-of-fold: "
        f"{how}; each held-out pair searched among all calibration items (the rest as "
        "distractors), so these are the figures to expect on pairs the fit never saw. "
        f"(At most {REPORT_ROWS} calibration pairs, a random sample, are scored.)"
    )


def below_raw(oof_raw: dict[str, float], oof_fit: dict[str, float], tol: float) -> list[str]:
    """A warning per cross-modal R@1 that falls more than ``tol`` below raw out of fold."""
    return [
        f"{m} {oof_fit[m]:.3f} vs raw {oof_raw[m]:.3f} on held-out pairs"
        for m in ("t2i_R@1", "i2t_R@1")
        if m in oof_fit and oof_fit[m] < oof_raw[m] - tol
    ]


def _flat(block: dict[str, Any]) -> dict[str, float]:
    return {
        "gap": block["gap"],
        "t2i_R@1": block["cross_modal"]["text_to_image"]["R@1"],
        "i2t_R@1": block["cross_modal"]["image_to_text"]["R@1"],
        "mixed_R@10": block["mixed"]["R@10"],
    }


def _cell(row: dict[str, float], m: str) -> str:
    se = row.get(f"{m}_se")
    return f"{row[m]:.3f}" if se is None else f"{row[m]:.3f} ± {_num(se):.3f}"


def _num(value: float) -> float:
    return 0.0 if value != value else value
