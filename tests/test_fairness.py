"""Fairness audit on synthetic data with a known bias: the figures it must report, the
objective `auto --objective fair` will use, and `gapfix eval --groups/--harmful`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gapfix import make_transform
from gapfix.cli import app
from gapfix.errors import InputError
from gapfix.fairness import ANY, fair_objective, fairness_audit, parse_harmful

D, CRIME, NONHUMAN = 16, 4, 5
runner = CliRunner()


def biased(seed: int = 0):
    """100 images of group A and 100 of group B, four benign classes (0-3) and two harmful
    prompts (4: crime, 5: non-human). Known bias: 30 of B's images are shifted toward the
    crime prompt and 10 of A's toward the non-human prompt; every other image sits on its own
    class. So the harmful rate is A 0.10, B 0.30 (gap 0.20, worst B); crime A 0 / B 0.30;
    non-human A 0.10 / B 0; zero-shot top-1 0.80."""
    rng = np.random.default_rng(seed)
    eye = np.eye(D, dtype=np.float32)
    prompts = eye[:6].copy()
    labels = np.arange(200) % 4
    groups = np.array(["A"] * 100 + ["B"] * 100)
    images = eye[labels] + 0.05 * rng.standard_normal((200, D)).astype(np.float32)
    images[:10] = 0.3 * eye[labels[:10]] + eye[NONHUMAN]
    images[100:130] = 0.3 * eye[labels[100:130]] + eye[CRIME]
    return images, prompts, labels, groups


HARMFUL = {"crime": np.array([CRIME]), "non-human": np.array([NONHUMAN])}


def test_reports_the_known_bias() -> None:
    x, t, lab, g = biased()
    rep = fairness_audit(x, t, g, HARMFUL, labels=lab)["raw"]
    assert rep["groups"] == {"A": 100, "B": 100}
    assert rep["harmful_rate"] == pytest.approx({"A": 0.10, "B": 0.30})
    assert rep["worst_group"] == "B" and rep["worst_group_rate"] == pytest.approx(0.30)
    assert rep["largest_gap"] == pytest.approx(0.20)
    assert rep["largest_gap_groups"] == ["B", "A"]
    assert rep["harmful_rate_overall"] == pytest.approx(0.20)
    assert rep["denigration"]["crime"] == pytest.approx({"A": 0.0, "B": 0.30, "largest_gap": 0.30})
    assert rep["denigration"]["non-human"] == pytest.approx(
        {"A": 0.10, "B": 0.0, "largest_gap": 0.10}
    )
    assert rep["per_label"][CRIME] == pytest.approx({"A": 0.0, "B": 0.30})
    assert rep["top1"] == pytest.approx(0.80)


def test_corrected_side_and_identity() -> None:
    x, t, lab, g = biased()
    ident = make_transform("identity").fit(x, t)
    audit = fairness_audit(x, t, g, HARMFUL, transform=ident, labels=lab)
    assert audit["corrected"] == audit["raw"]
    assert audit["harmful_sets"] == {"crime": [CRIME], "non-human": [NONHUMAN]}


class _DropCrime:
    """A test double of a fitted transform: removes the crime direction from images."""

    def transform(self, z: np.ndarray, modality: str) -> np.ndarray:
        z = np.array(z, dtype=np.float32)
        if modality == "image":
            z[:, CRIME] = 0
        return z / np.linalg.norm(z, axis=1, keepdims=True)


class _Scramble:
    """A test double that destroys zero-shot accuracy (rolls image coordinates)."""

    def transform(self, z: np.ndarray, modality: str) -> np.ndarray:
        z = np.array(z, dtype=np.float32)
        return np.roll(z, 1, axis=1) if modality == "image" else z


def test_fair_objective() -> None:
    x, t, lab, g = biased()
    ident = make_transform("identity").fit(x, t)
    s = fair_objective(ident, x, t, lab, g, HARMFUL)
    assert s["admissible"] and s["score"] == pytest.approx(-0.30)
    assert s["top1"] == s["top1_raw"] == pytest.approx(0.80)
    # removing the crime direction: B's 30 shifted images fall back to their own class, so
    # the worst group becomes A (0.10) and top-1 rises to 0.95
    s = fair_objective(_DropCrime(), x, t, lab, g, HARMFUL)
    assert s["admissible"] and s["score"] == pytest.approx(-0.10)
    assert s["worst_group_rate_raw"] == pytest.approx(0.30) and s["top1"] == pytest.approx(0.95)
    assert s["largest_gap"] == pytest.approx(0.10)
    # fewer harmful labels at the cost of accuracy is not admissible
    s = fair_objective(_Scramble(), x, t, lab, g, HARMFUL)
    assert not s["admissible"] and s["score"] == float("-inf") and s["top1"] < 0.8
    assert fair_objective(_Scramble(), x, t, lab, g, HARMFUL, tolerance=1.0)["admissible"]


def test_parse_harmful(tmp_path: Path) -> None:
    assert parse_harmful(["4,5"], 6)["harmful"].tolist() == [4, 5]
    sets = parse_harmful(["crime=4", " non-human = 5, 3 "], 6)
    assert {k: v.tolist() for k, v in sets.items()} == {"crime": [4], "non-human": [3, 5]}
    np.save(tmp_path / "h.npy", np.array([5, 4]))
    (tmp_path / "h.txt").write_text("4\n5, 3\n")
    assert parse_harmful([str(tmp_path / "h.npy")], 6)["harmful"].tolist() == [4, 5]
    assert parse_harmful([f"x={tmp_path / 'h.txt'}"], 6)["x"].tolist() == [3, 4, 5]
    for bad, says in [
        (["6"], "out of range"), (["-1"], "out of range"), (["a,b"], "comma-separated"),
        (["crime="], "at least one"), (["c=1", "c=2"], "repeated"), ([f"{ANY}=1"], "reserved"),
        ([], "at least one"), ([str(tmp_path / "none.npy")], "not found"),
    ]:  # fmt: skip
        with pytest.raises(InputError, match=says):
            parse_harmful(bad, 6)


def test_audit_refuses_bad_groups() -> None:
    x, t, _, g = biased()
    with pytest.raises(InputError, match="199 group labels for 200"):
        fairness_audit(x, t, g[:199], HARMFUL)
    with pytest.raises(InputError, match="1-D"):
        fairness_audit(x, t, g[:, None], HARMFUL)
    with pytest.raises(InputError, match="NaN"):
        fairness_audit(x, t, np.full(200, np.nan), HARMFUL)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    x, t, lab, g = biased()
    out = {}
    for name, arr in {"img": x, "cls": t, "lab": lab, "groups": g, "short": g[:150],
                      "intgroups": (g == "B").astype(np.int64)}.items():  # fmt: skip
        np.save(tmp_path / f"{name}.npy", arr)
        out[name] = str(tmp_path / f"{name}.npy")
    art = str(tmp_path / "c.gapfix")
    r = runner.invoke(app, ["fit", "--image", out["img"], "--text", out["cls"], "--method",
                            "centering", "--out", art])  # fmt: skip
    assert r.exit_code == 0, r.output
    out["art"] = art
    return out


def test_cli_eval_groups_json(files: dict[str, str]) -> None:
    args = ["eval", "--image", files["img"], "--text", files["cls"], "--groups", files["groups"],
            "--harmful", "crime=4", "--harmful", "non-human=5"]  # fmt: skip
    r = runner.invoke(app, [*args, "--labels", files["lab"], "--transform", files["art"], "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    raw = out["fairness"]["raw"]
    assert raw["harmful_rate"] == pytest.approx({"A": 0.10, "B": 0.30})
    assert raw["denigration"]["crime"]["B"] == pytest.approx(0.30)
    assert raw["largest_gap"] == pytest.approx(0.20) and raw["top1"] == pytest.approx(0.80)
    assert "corrected" in out["fairness"] and out["raw"]["zeroshot"]["top1"] == pytest.approx(0.8)
    # without labels: the audit alone (no top-1); integer groups work too
    r = runner.invoke(app, ["eval", "--image", files["img"], "--text", files["cls"], "--groups",
                            files["intgroups"], "--harmful", "4,5", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["fairness"]["raw"]
    assert rep["harmful_rate"] == pytest.approx({"0": 0.10, "1": 0.30}) and "top1" not in rep
    r = runner.invoke(app, [*args, "--transform", files["art"]])  # the tables
    assert r.exit_code == 0, r.output
    assert "largest gap" in r.stdout and "worst group B (0.3000)" in r.stdout
    assert "corrected (centering)" in r.stdout


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--groups", "short", "--harmful", "4"], "150 group labels for 200"),
        (["--groups", "groups", "--harmful", "6"], "out of range"),
        (["--groups", "groups", "--harmful", "4,x"], "comma-separated"),
        (["--groups", "groups"], "go together"),
        (["--harmful", "4"], "go together"),
        (["--groups", "nope", "--harmful", "4"], "not found"),
    ],
)
def test_cli_bad_audit_input_one_line_exit_2(files: dict[str, str], extra, says) -> None:
    extra = [files.get(a, a) for a in extra]
    r = runner.invoke(app, ["eval", "--image", files["img"], "--text", files["cls"], *extra])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("gapfix: error:") and "\n" not in err and says in err, err


def test_gap_induced_bias_and_the_objective_prefers_the_correction() -> None:
    """benchmarks.fairness_audit's construction (harmful prompts lean into the image cone;
    group B carries a spurious crime component), fitted on one half, audited on the other.
    Measured: raw harmful rate A 0.040 / B 0.225, top-1 0.867; centering 0.005 / 0.005, 0.995
    (mean of both folds)."""
    from benchmarks.fairness_audit import HARMFUL as H
    from benchmarks.fairness_audit import gap_induced_bias

    x, t, lab, g = gap_induced_bias()
    h = len(x) // 2
    scores: dict[str, list[dict]] = {"identity": [], "centering": []}
    for train, test in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        for method in scores:
            tr = make_transform(method).fit(x[train], t)
            scores[method].append(fair_objective(tr, x[test], t, lab[test], g[test], H))
    mean = {m: {k: np.mean([s[k] for s in v]) for k in v[0]} for m, v in scores.items()}
    assert mean["identity"]["worst_group_rate"] == pytest.approx(0.225, abs=0.005)
    assert mean["identity"]["top1"] == pytest.approx(0.867, abs=0.005)
    assert mean["centering"]["worst_group_rate"] == pytest.approx(0.005, abs=0.005)
    assert mean["centering"]["top1"] == pytest.approx(0.995, abs=0.005)
    assert mean["centering"]["score"] > mean["identity"]["score"]  # what `fair` would pick


def test_auto_objective_fair_picks_a_correction_that_lowers_the_worst_group_rate(
    tmp_path: Path,
) -> None:
    """`auto --objective fair` on the gap-induced bias: raw leaves group B at a harmful-label
    rate of 0.225 with top-1 0.867 (held out); the chosen transform must cut the worst group's
    rate while top-1 does not fall, and say so in its table."""
    from benchmarks.fairness_audit import HARMFUL as H
    from benchmarks.fairness_audit import gap_induced_bias

    x, t, lab, g = gap_induced_bias()
    h = len(x) // 2
    auto = make_transform("auto", objective="fair").fit(
        x[:h], t, labels=lab[:h], groups=g[:h], harmful=H
    )
    # measured: cross-validated worst-group rate 0.26 raw, 0.021 for mean-shift lam=1 (picked
    # by the one-SE rule over centering's 0.018: it moves the data least)
    assert auto.chosen_ == {"method": "mean-shift", "params": {"lam": 1.0}}
    assert "one-standard-error rule" in auto.fit_stats_["rule"]
    rows = {r["method"]: r for r in auto.fit_table_ if not r["params"]}
    assert rows["identity"]["fair_score"] == pytest.approx(-0.26, abs=0.01)
    assert rows["centering"]["fair_score"] == pytest.approx(-0.018, abs=0.01)
    held = fair_objective(auto, x[h:], t, lab[h:], g[h:], H)  # the other half, never seen
    assert held["worst_group_rate_raw"] == pytest.approx(0.19, abs=0.01)
    assert held["worst_group_rate"] <= 0.02
    assert held["top1"] >= held["top1_raw"]
    with pytest.raises(InputError, match="needs --groups"):
        make_transform("auto", objective="fair").fit(x, t, labels=lab)
    with pytest.raises(InputError, match="groups"):
        make_transform("auto", objective="fair").fit(x, t, labels=lab, groups=g[:5], harmful=H)
    with pytest.raises(InputError, match="objective 'fair'"):
        make_transform("auto").fit(x, x, groups=g, harmful=H)


def test_cli_fit_auto_objective_fair(files: dict[str, str], tmp_path: Path) -> None:
    out = str(tmp_path / "fair.gapfix")
    base = ["fit", "--image", files["img"], "--text", files["cls"], "--out", out]
    fair = ["--labels", files["lab"], "--groups", files["groups"], "--harmful", "crime=4",
            "--harmful", "non-human=5"]  # fmt: skip
    r = runner.invoke(app, [*base, "--method", "auto", "--objective", "fair", *fair])
    assert r.exit_code == 0, r.output
    assert "fair_score" in r.output and "decided by:" in r.output
    from gapfix.transforms.artifact import load_transform

    assert load_transform(out).objective == "fair"
    Path(out).unlink()
    for bad in (
        [*base, "--method", "centering", *fair],  # --groups is for auto --objective fair
        [*base, "--method", "auto", "--objective", "fair", "--labels", files["lab"]],
        [*base, "--method", "auto", "--objective", "fair", *fair[:-4], "--harmful", "9"],
    ):
        r = runner.invoke(app, bad)
        err = r.stderr.strip()
        assert r.exit_code == 2 and err.startswith("gapfix: error:") and "\n" not in err, r.output
        assert not Path(out).exists()
