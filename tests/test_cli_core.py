"""The CLI contract: stats / fit / apply / eval, file formats, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gapfix import load_transform
from gapfix.cli import app
from tests.conftest import COCO

runner = CliRunner()
IMG, TXT = f"{COCO}:image", f"{COCO}:text"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_stats_json_and_plot(tmp_path: Path) -> None:
    r = run(
        "stats", "--image", IMG, "--text", TXT, "--paired", "--json", "--plot", tmp_path / "g.png"
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["centroid_gap"] == pytest.approx(0.8475, abs=1e-3)
    assert "paired" in out
    assert (tmp_path / "g.png").stat().st_size > 1000
    table = run("stats", "--image", IMG, "--text", TXT)
    assert table.exit_code == 0 and "centroid gap" in table.stdout


def test_fit_apply_eval_round_trip(tmp_path: Path) -> None:
    art = tmp_path / "c.gapfix"
    r = run(
        "fit",
        "--image",
        IMG,
        "--text",
        TXT,
        "--method",
        "mean-shift",
        "--param",
        "lam=0.5",
        "--out",
        art,
    )
    assert r.exit_code == 0, r.output
    t = load_transform(art)
    assert t.method == "mean-shift" and t.lam == 0.5
    out = tmp_path / "out.npy"
    r = run("apply", "--transform", art, "--modality", "text", "--input", TXT, "--output", out)
    assert r.exit_code == 0, r.output
    with np.load(COCO) as d:
        np.testing.assert_allclose(np.load(out), t.transform(d["text"], "text"), atol=1e-6)
    r = run("eval", "--image", IMG, "--text", TXT, "--transform", art, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["corrected"]["gap"] < res["raw"]["gap"]
    assert res["transform"]["method"] == "mean-shift"


def test_input_formats(tmp_path: Path) -> None:
    with np.load(COCO) as d:
        img, txt = d["image"], d["text"]
    np.save(tmp_path / "i.npy", img)
    table = pa.table(
        {"emb": pa.array(list(txt), type=pa.list_(pa.float32())), "id": range(len(txt))}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(txt.ravel()), txt.shape[1])
    pq.write_table(pa.table({"v": fixed}), tmp_path / "f.parquet")
    for text_spec in (
        f"{tmp_path}/t.parquet:emb",
        f"{tmp_path}/f.parquet:v",
        f"{tmp_path}/f.parquet",
    ):
        r = run("stats", "--image", tmp_path / "i.npy", "--text", text_spec, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["centroid_gap"] == pytest.approx(0.8475, abs=1e-3)


def test_auto_with_objective_and_zeroshot_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with np.load(COCO) as d:
        img, txt = d["image"], d["text"]
    classes = txt[:10]
    labels = rng.integers(0, 10, 200)
    images = np.stack([img[i] for i in labels])  # image i ~ its paired caption's class
    images += 0.01 * rng.standard_normal(images.shape).astype(np.float32)
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "cls.npy", classes)
    np.save(tmp_path / "lab.npy", labels)
    art = tmp_path / "z.gapfix"
    r = run(
        "fit", "--image", tmp_path / "img.npy", "--text", tmp_path / "cls.npy", "--method", "auto",
        "--objective", "zeroshot", "--labels", tmp_path / "lab.npy", "--param", "methods=centering,standardize",
        "--out", art,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "zeroshot_top1" in r.stdout
    r = run("eval", "--image", tmp_path / "img.npy", "--text", tmp_path / "cls.npy", "--labels",
            tmp_path / "lab.npy", "--transform", art, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["corrected"]["zeroshot"]["top1"] > 0.5


def _bad(tmp_path: Path) -> dict[str, list[str]]:
    with np.load(COCO) as d:
        img, txt = d["image"], d["text"]
    nan = img.copy()
    nan[7, 1] = np.nan
    zero = img.copy()
    zero[2] = 0
    files = {
        "nan": nan, "zero": zero, "one_d": img[0], "three_d": img[None], "dim": img[:, :100],
        "one_row": img[:1], "labels_bad": np.arange(250) + 1000, "unpaired": txt[:100],
    }  # fmt: skip
    for name, arr in files.items():
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "garbage.npy").write_bytes(b"garbage")
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    np.save(tmp_path / "objects.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    p = lambda n: str(tmp_path / f"{n}.npy")  # noqa: E731
    art = str(tmp_path / "ok.gapfix")
    run("fit", "--image", IMG, "--text", TXT, "--method", "centering", "--out", art)
    out = str(tmp_path / "never.gapfix")
    return {
        "nan": ["stats", "--image", p("nan"), "--text", TXT],
        "inf/zero": ["fit", "--image", p("zero"), "--text", TXT, "--method", "centering", "--out", out],
        "1-D": ["fit", "--image", p("one_d"), "--text", TXT, "--method", "centering", "--out", out],
        "3-D": ["stats", "--image", p("three_d"), "--text", TXT],
        "dims differ": ["fit", "--image", p("dim"), "--text", TXT, "--method", "centering", "--out", out],
        "one row": ["fit", "--image", p("one_row"), "--text", TXT, "--method", "centering", "--out", out],
        "unknown method": ["fit", "--image", IMG, "--text", TXT, "--method", "magic", "--out", out],
        "unknown param": ["fit", "--image", IMG, "--text", TXT, "--method", "centering", "--param", "x=1", "--out", out],
        "paired method unpaired": ["fit", "--image", IMG, "--text", p("unpaired"), "--method", "procrustes", "--out", out],
        "labels out of range": ["fit", "--image", IMG, "--text", TXT, "--method", "auto", "--objective", "zeroshot", "--labels", p("labels_bad"), "--out", out],
        "unreadable": ["stats", "--image", p("garbage"), "--text", TXT],
        "pickled objects": ["stats", "--image", p("objects"), "--text", TXT],
        "missing file": ["stats", "--image", p("nope"), "--text", TXT],
        "apply dim": ["apply", "--transform", art, "--modality", "image", "--input", p("dim"), "--output", str(tmp_path / "never.npy")],
        "apply modality": ["apply", "--transform", art, "--modality", "audio", "--input", IMG, "--output", str(tmp_path / "never.npy")],
        "apply nan": ["apply", "--transform", art, "--modality", "image", "--input", p("nan"), "--output", str(tmp_path / "never.npy")],
        "query text without its mean": ["fit", "--image", IMG, "--text", TXT, "--method", "centering", "--query-text", TXT, "--out", out],
        "query text of another dim": ["fit", "--image", IMG, "--text", TXT, "--method", "centering", "--param", "query_text_mean=true", "--query-text", p("dim"), "--out", out],
        "apply bad role": ["apply", "--transform", art, "--modality", "text", "--input", TXT, "--role", "asker", "--output", str(tmp_path / "never.npy")],
        "bad transform": ["apply", "--transform", p("garbage"), "--modality", "image", "--input", IMG, "--output", str(tmp_path / "never.npy")],
        "key on a .npy": ["apply", "--transform", art, "--modality", "image", "--input", p("one_row") + ":nonsense", "--output", str(tmp_path / "never.npy")],
        "npz not a zip": ["stats", "--image", str(tmp_path / "garbage.npz"), "--text", TXT],
    }  # fmt: skip


def test_bad_input_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    before = None
    for name, args in _bad(tmp_path).items():
        if before is None:
            before = sorted(p.name for p in tmp_path.iterdir())
        r = run(*args)
        assert r.exit_code == 2, (name, r.output)
        err = r.stderr.strip()
        assert err.startswith("gapfix: error:") and "\n" not in err, (name, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # nothing written


def test_query_text_mean_fit_and_apply(tmp_path: Path) -> None:
    d = np.load(COCO)
    q = d["text"][:100] * 0.8 + 0.2 * d["text"][100:200]  # "queries" unlike the corpus texts
    np.save(tmp_path / "q.npy", q)
    art = tmp_path / "q.gapfix"
    r = run("fit", "--image", IMG, "--text", TXT, "--method", "centering",
            "--param", "query_text_mean=true", "--query-text", tmp_path / "q.npy", "--out", art)  # fmt: skip
    assert r.exit_code == 0, r.output
    outs = {}
    for role in ("query", "corpus"):
        outs[role] = tmp_path / f"{role}.npy"
        r = run("apply", "--transform", art, "--modality", "text", "--input",
                tmp_path / "q.npy", "--output", outs[role], "--role", role)  # fmt: skip
        assert r.exit_code == 0, r.output
    u = q / np.linalg.norm(q, axis=1, keepdims=True)  # transforms act on unit rows
    centred = u - u.mean(0)
    want = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(outs["query"]), want, atol=1e-5)
    assert not np.allclose(np.load(outs["corpus"]), want, atol=1e-3)


def test_unreadable_files_are_named_plainly(tmp_path: Path) -> None:
    cases = _bad(tmp_path)
    assert "is not a NumPy .npy file" in run(*cases["unreadable"]).stderr
    assert "holds Python objects" in run(*cases["pickled objects"]).stderr
    assert "not a NumPy .npz file" in run(*cases["npz not a zip"]).stderr
    assert "is a .npy file, which holds one array" in run(*cases["key on a .npy"]).stderr


def test_console_script_exit_code(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "gapfix"
    r = subprocess.run(
        [exe, "fit", "--image", IMG, "--text", TXT, "--method", "nope", "--out", tmp_path / "x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown method" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["apply", "--input", IMG, "--output", "never.npy"], "Missing option"),
        (["nope"], "No such command 'nope'"),
        (["serve", "--port", "0"], "Invalid value for '--port'"),
        (["stats", "--image", IMG, "--text", TXT, "--bogus"], "No such option"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(tmp_path: Path, args, says: str) -> None:
    exe = Path(sys.executable).parent / "gapfix"
    r = subprocess.run([exe, *args], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("gapfix: error: ") and "\n" not in err and says in err, err
    assert "--help" in err and not (tmp_path / "never.npy").exists()


def test_help_and_success_keep_their_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "gapfix"
    assert subprocess.run([exe, "--help"], capture_output=True, check=False).returncode == 0
    bare = subprocess.run([exe], capture_output=True, text=True, check=False)
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr
    ok = subprocess.run([exe, "stats", "--image", IMG, "--text", TXT, "--json"],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0 and json.loads(ok.stdout)["n_image"] == 250
