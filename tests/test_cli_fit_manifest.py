"""`gapfix fit --manifest`: streaming fit over the shards `gapfix embed` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gapfix import load_transform, make_transform
from gapfix.cli import app
from gapfix.jobs import iter_embedding_blocks, iter_paired_blocks
from gapfix.jobs import testing as T

runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitm")
    ckpt = T.write_tiny_checkpoint(root / "tiny.pt")
    table, _ = T.make_table(root / "tab", n=10, fmt="csv")
    r = runner.invoke(
        app,
        ["embed", str(table), "--out", str(root / "emb"), "--model", "gapfix-tiny",
         "--pretrained", ckpt, "--batch-size", "8", "--shard-size", "4", "--workers", "0",
         "--progress", "log", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return root / "emb" / "manifest.json"


@pytest.mark.parametrize("method", ["centering", "whiten", "procrustes"])
def test_fit_from_manifest_matches_in_memory_fit(manifest, tmp_path, method: str) -> None:
    out = tmp_path / "t.gapfix"
    r = runner.invoke(
        app, ["fit", "--manifest", str(manifest), "--method", method, "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    streamed = load_transform(out)
    assert streamed.model_id == json.loads(manifest.read_text())["model_id"]
    if method == "procrustes":
        pairs = list(iter_paired_blocks(manifest))
        img = np.concatenate([p[0] for p in pairs])
        txt = np.concatenate([p[1] for p in pairs])
    else:
        img = np.concatenate(list(iter_embedding_blocks(manifest, "image")))
        txt = np.concatenate(list(iter_embedding_blocks(manifest, "text")))
    batch = make_transform(method).fit(img, txt)
    np.testing.assert_allclose(
        streamed.transform(img, "image"), batch.transform(img, "image"), atol=1e-5
    )
    np.testing.assert_allclose(
        streamed.transform(txt, "text"), batch.transform(txt, "text"), atol=1e-5
    )


def test_fit_manifest_refusals(manifest, tmp_path) -> None:
    out = tmp_path / "never.gapfix"
    for args in (
        ["fit", "--manifest", str(manifest), "--method", "auto", "--out", str(out)],
        [
            "fit",
            "--manifest",
            str(tmp_path / "missing.json"),
            "--method",
            "centering",
            "--out",
            str(out),
        ],
        [
            "fit",
            "--manifest",
            str(manifest),
            "--image",
            "x.npy",
            "--method",
            "centering",
            "--out",
            str(out),
        ],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("gapfix: error:")
    assert not out.exists()


def test_fit_refuses_an_unfinished_embed_job(manifest, tmp_path) -> None:
    part = tmp_path / "part"
    part.mkdir()
    m = json.loads(manifest.read_text())
    m["shards"] = m["shards"][:1]  # as a killed or still-running embed leaves it
    (part / "manifest.json").write_text(json.dumps(m))
    for rec in m["shards"]:
        (part / rec["file"]).parent.mkdir(parents=True, exist_ok=True)
        (part / rec["file"]).write_bytes((manifest.parent / rec["file"]).read_bytes())
    out = tmp_path / "never.gapfix"
    args = ["fit", "--manifest", str(part / "manifest.json"), "--method", "centering"]
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2 and "not finished (1/" in r.stderr, r.output
    assert not out.exists()
