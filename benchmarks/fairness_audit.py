"""The README's fairness-audit figures, on synthetic embeddings with a gap-induced bias.

No FairFace embeddings ship with gapfix, so this shows the audit on a construction whose bias
is known: 400 "face" images of groups A and B (200 each) in an image cone (a shared axis),
four benign class prompts and two harmful ones (0-3 benign, 4 "crime", 5 "non-human") in a
text cone; the harmful prompts lean ``LEAN`` toward the image cone, and group B's images carry
a spurious ``ASSOC`` component along the crime class. 2-fold cross-fitting: each transform is
fitted on one half (images + the six prompts) and audited on the other; figures are the mean
of both folds. The adapter row trains on (image, true class prompt) pairs: labelled
calibration, unlike the label-free rows. ``fair`` is ``gapfix.fairness.fair_objective``'s
score (minus the worst group's harmful rate; -inf when top-1 falls).

Run: ``.venv/bin/python -m benchmarks.fairness_audit``
"""

from __future__ import annotations

import numpy as np

from gapfix import make_transform
from gapfix.fairness import fair_objective, fairness_audit

LEAN, ASSOC, NOISE, DIM, N = 0.5, 0.4, 0.15, 64, 400
HARMFUL = {"crime": np.array([4]), "non-human": np.array([5])}
METHODS = [
    ("identity", {}),
    ("centering", {}),
    ("mean-shift", {"lam": 1.0}),
    ("whiten", {"shrinkage": 0.9}),
    ("contrastive-adapter", {}),
]


def gap_induced_bias(seed: int = 0):
    """Images, class prompts, true labels and group labels of the construction above."""
    rng = np.random.default_rng(seed)
    e = np.eye(DIM, dtype=np.float32)
    text_axis, image_axis = e[DIM - 1], e[DIM - 2]
    prompts = np.array(
        [e[c] + text_axis for c in range(4)]
        + [e[h] + text_axis + LEAN * image_axis for h in (4, 5)]
    )
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    labels = np.arange(N) % 4
    groups = np.where(np.arange(N) < N // 2, "A", "B")
    images = e[labels] + image_axis + NOISE * rng.standard_normal((N, DIM)).astype(np.float32)
    images[groups == "B"] += ASSOC * e[4]
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    perm = rng.permutation(N)  # interleave groups so each half holds both
    return images[perm], prompts.astype(np.float32), labels[perm], groups[perm]


def main() -> None:
    x, t, lab, g = gap_induced_bias()
    h = N // 2
    folds = [(slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))]
    print("| method | harmful rate A | harmful rate B | largest gap | crime A / B | "
          "non-human A / B | top-1 | fair score |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for method, params in METHODS:
        rows = []
        for train, test in folds:
            tr = make_transform(method, **params)
            if method == "contrastive-adapter":
                tr.fit(x[train], t, labels=lab[train])
            else:
                tr.fit(x[train], t)
            rep = fairness_audit(x[test], t, g[test], HARMFUL, tr, lab[test])["corrected"]
            score = fair_objective(tr, x[test], t, lab[test], g[test], HARMFUL)["score"]
            den = rep["denigration"]
            rows.append(
                [rep["harmful_rate"]["A"], rep["harmful_rate"]["B"], rep["largest_gap"],
                 den["crime"]["A"], den["crime"]["B"], den["non-human"]["A"],
                 den["non-human"]["B"], rep["top1"], score]
            )  # fmt: skip
        m = np.mean(rows, axis=0)
        label = method + (
            "" if not params else f" ({', '.join(f'{k}={v}' for k, v in params.items())})"
        )
        print(
            f"| {label} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} / {m[4]:.3f} | "
            f"{m[5]:.3f} / {m[6]:.3f} | {m[7]:.3f} | {m[8]:.3f} |"
        )


if __name__ == "__main__":
    main()
