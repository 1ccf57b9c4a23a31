"""The README's contrastive-adapter figures: raw, centering, whiten and the adapter, cross-fitted.

2-fold cross-fitting on each dev file (fit on the first half, evaluate on the other half, and
vice versa; the mean of both folds), then the same over ``SPLITS`` random 2-fold splits (mean
± std of each figure): gap, text->image and image->text R@1, mixed-modality R@10, fit seconds.
Files: tests/fixtures/coco_val2017_clip_vitb16_dev250.npz (CLIP ViT-B/16 on COCO) and
tests/fixtures/convirt_dev500.npz (ConVIRT, near-chance cross-modal R@1: must do no harm).
The labelled (zero-shot) mode is reported apart: 10 k-means topics of the COCO captions are
the classes (prompt = unit topic centroid; an image's label = its own caption's topic).

Run: ``.venv/bin/python -m benchmarks.adapter_table``
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gapfix import make_transform
from gapfix.evaluation import evaluate, zeroshot_accuracy

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DATA = {
    "COCO (CLIP ViT-B/16, 250 pairs)": FIXTURES / "coco_val2017_clip_vitb16_dev250.npz",
    "ConVIRT (500 pairs)": FIXTURES / "convirt_dev500.npz",
}
METHODS = [
    ("identity", {}),
    ("centering", {}),
    ("whiten", {"shrinkage": 0.9}),
    ("contrastive-adapter", {}),
    ("contrastive-adapter", {"init": "whiten"}),
]
SPLITS = 5


def cross_fit(x: np.ndarray, y: np.ndarray, folds, method: str, params: dict) -> np.ndarray:
    """Mean over folds of [gap, t2i R@1, i2t R@1, mixed R@10, fit seconds]."""
    rows = []
    for train, test in folds:
        t0 = time.perf_counter()
        t = make_transform(method, **params).fit(x[train], y[train])
        seconds = time.perf_counter() - t0
        c = evaluate(x[test], y[test], t)["corrected"]
        cm = c["cross_modal"]
        rows.append(
            [
                c["gap"],
                cm["text_to_image"]["R@1"],
                cm["image_to_text"]["R@1"],
                c["mixed"]["R@10"],
                seconds,
            ]
        )
    return np.mean(rows, axis=0)


def halves(n: int, seed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed first-half/second-half folds (seed None) or a random 2-fold split."""
    idx = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    h = n // 2
    return [(idx[:h], idx[h:]), (idx[h:], idx[:h])]


def caption_classes(y: np.ndarray, classes: int = 10, seed: int = 0):
    """Class prompts and labels from the captions: k-means topics of the caption embeddings;
    prompt = the unit centroid of a topic, label of image i = the topic of its own caption."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=classes, n_init=10, random_state=seed).fit(y)
    prompts = km.cluster_centers_.astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    return prompts, km.labels_.astype(np.int64)


def zeroshot_rows(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Zero-shot top-1 on the held-out half, label-free methods vs the labelled adapter."""
    prompts, labels = caption_classes(y)
    folds = halves(len(x), None)
    out = []
    for method in ("identity", "centering", "contrastive-adapter"):
        accs = []
        for train, test in folds:
            t = make_transform(method)
            if method == "contrastive-adapter":
                t.fit(x[train], prompts, labels=labels[train])
            else:
                t.fit(x[train], prompts)
            ci, ct = t.transform(x[test], "image"), t.transform(prompts, "text")
            accs.append(zeroshot_accuracy(ci, ct, labels[test]))
        out.append(f"| {method} | {np.mean(accs):.3f} |")
    return out


def main() -> None:
    for name, path in DATA.items():
        with np.load(path) as d:
            x, y = d["image"], d["text"]
        print(f"\n{name}: fixed halves | {SPLITS} random 2-fold splits (mean ± std)")
        print("| method | gap | text→image R@1 | image→text R@1 | mixed R@10 | fit s | "
              "random splits: gap | t2i | i2t | mixed R@10 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for method, params in METHODS:
            fixed = cross_fit(x, y, halves(len(x), None), method, params)
            spread = np.array(
                [cross_fit(x, y, halves(len(x), s), method, params) for s in range(SPLITS)]
            )
            m, s = spread.mean(axis=0), spread.std(axis=0)
            rnd = " | ".join(f"{m[i]:.3f} ± {s[i]:.3f}" for i in range(4))
            label = method + "".join(f" ({k}={v})" for k, v in params.items())
            print(
                f"| {label} | {fixed[0]:.3f} | {fixed[1]:.3f} | {fixed[2]:.3f} | "
                f"{fixed[3]:.3f} | {fixed[4]:.2f} | {rnd} |"
            )
    with np.load(DATA["COCO (CLIP ViT-B/16, 250 pairs)"]) as d:
        x, y = d["image"], d["text"]
    print("\nLabelled calibration (zero-shot top-1 over 10 caption topics, fixed halves):")
    print("| method | top-1 |\n|---|---|")
    print("\n".join(zeroshot_rows(x, y)))


if __name__ == "__main__":
    main()
