"""contrastive-adapter: contract, determinism, early stopping, artifacts and every apply path,
labelled calibration, bad input, and its measured quality on COCO and ConVIRT."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gapfix import load_transform, make_transform
from gapfix.cli import app
from gapfix.errors import InputError
from gapfix.evaluation import evaluate, zeroshot_accuracy
from gapfix.transforms.adapter_training import _slerp
from tests.conftest import COCO, FIXTURES, make_gapped

CONVIRT = FIXTURES / "convirt_dev500.npz"
A = "contrastive-adapter"


@pytest.fixture(scope="module")
def small():
    return make_gapped(160, d=32, seed=3)


@pytest.fixture(scope="module")
def fitted(small):
    x, y = small
    return make_transform(A, epochs=30).fit(x, y)


def test_contract_and_training_stats(small, fitted) -> None:
    x, y = small
    for modality, z in (("image", x), ("text", y)):
        out = fitted.transform(z, modality)
        assert out.dtype == np.float32 and out.shape == z.shape
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    st = fitted.fit_stats_
    assert st["n_image"] == 160 and st["gap_after"] < 0.5 * st["gap_before"]
    a = st["adapter"]
    assert a["mode"] == "pairs" and a["train_rows"] + a["val_rows"] == 160
    assert a["val_rows"] == 32  # val_fraction 0.2
    assert 0 <= a["best_epoch"] <= a["epochs_run"] <= 30
    assert a["val_loss_best"] <= a["val_loss_initial"]
    assert fitted.matrix_image_.shape == (32, 32) and fitted.shift_text_.shape == (32,)


def test_torch_threads_are_restored_after_training(small, monkeypatch) -> None:
    from gapfix.transforms import adapter_training

    x, y = small
    before, seen, real = torch.get_num_threads(), [], adapter_training._train

    def spy(torch_mod, *args):
        seen.append(torch_mod.get_num_threads())
        return real(torch_mod, *args)

    monkeypatch.setattr(adapter_training, "_train", spy)
    make_transform(A, epochs=2, threads=3).fit(x, y)
    make_transform(A, epochs=2, threads=0).fit(x, y)
    assert seen == [3, before] and torch.get_num_threads() == before


def test_deterministic_with_a_seed(small, fitted) -> None:
    x, y = small
    again = make_transform(A, epochs=30).fit(x, y)
    for name in fitted.fitted_arrays:
        np.testing.assert_array_equal(getattr(again, name), getattr(fitted, name))
    other = make_transform(A, epochs=30, seed=1).fit(x, y)
    assert not np.array_equal(other.matrix_image_, fitted.matrix_image_)


def test_early_stopping_keeps_the_initial_map_when_training_only_hurts(small) -> None:
    """lr=1 wrecks the maps at the first step: the held-out loss never improves, so the
    adapter returns its starting point (centering here) unchanged."""
    x, y = small
    t = make_transform(A, lr=1.0, epochs=20, patience=3).fit(x, y)
    assert t.fit_stats_["adapter"]["best_epoch"] == 0
    assert t.fit_stats_["adapter"]["epochs_run"] == 3
    json.dumps(t.to_summary(), allow_nan=False)  # stats stay strict JSON however training went
    c = make_transform("centering").fit(x, y)
    for modality, z in (("image", x), ("text", y)):
        np.testing.assert_allclose(t.transform(z, modality), c.transform(z, modality), atol=1e-5)


def test_pull_keeps_the_maps_near_their_start() -> None:
    """Measured on 120 COCO pairs: ||W - I|| is 2.11 without the pull and 0.51 with pull=100."""
    with np.load(COCO) as d:
        x, y = d["image"][:120], d["text"][:120]
    moved = {}
    for pull in (0.0, 100.0):
        t = make_transform(A, pull=pull, epochs=10, patience=100).fit(x, y)
        moved[pull] = float(np.linalg.norm(t.matrix_image_ - np.eye(512)))
    assert moved[0.0] == pytest.approx(2.11, abs=0.2)
    assert moved[100.0] == pytest.approx(0.51, abs=0.1)


def test_slerp_stays_on_the_sphere_between_its_ends() -> None:
    rng = np.random.default_rng(0)
    a = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((5, 8))), dim=1)
    b = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((5, 8))), dim=1)
    for lam in (0.0, 0.3, 1.0):
        m = _slerp(a, b, torch.full((5, 1), lam, dtype=a.dtype))
        np.testing.assert_allclose(m.norm(dim=1).numpy(), 1.0, atol=1e-6)
        angle = torch.acos((a * b).sum(1))
        np.testing.assert_allclose(torch.acos((a * m).sum(1).clamp(-1, 1)), lam * angle, atol=1e-3)


def test_artifact_round_trip_through_every_apply_path(fitted, small, tmp_path, monkeypatch) -> None:
    from gapfix import kernels

    x, y = small
    path = tmp_path / "a.gapfix"
    fitted.save(path)
    loaded = load_transform(path)
    assert loaded.method == A and loaded.get_params() == fitted.get_params()
    assert loaded.fit_stats_["adapter"] == fitted.fit_stats_["adapter"]
    for modality, z in (("image", x), ("text", y)):
        want = fitted.transform(z, modality)
        np.testing.assert_array_equal(loaded.transform(z, modality), want)  # BLAS blocks
        got = loaded.transform(torch.from_numpy(z), modality)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)  # torch
        monkeypatch.setattr(kernels, "HAVE_NUMBA", False)  # numpy fallback of the fused pass
        np.testing.assert_allclose(loaded.transform(z, modality), want, atol=1e-5)
        monkeypatch.setattr(kernels, "HAVE_NUMBA", True)
        # the kernel is the stored affine map: n((u - shift) @ matrix)
        shift = getattr(fitted, f"shift_{modality}_").astype(np.float64)
        m = getattr(fitted, f"matrix_{modality}_").astype(np.float64)
        ref = (z.astype(np.float64) - shift) @ m
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(want, ref, atol=1e-5)


def test_bad_input_is_refused_before_training(small) -> None:
    x, y = small
    with pytest.raises(InputError, match="init"):
        make_transform(A, init="random")
    with pytest.raises(InputError, match="device"):
        make_transform(A, device="tpu")
    with pytest.raises(InputError, match="lr"):
        make_transform(A, lr=0.0)
    with pytest.raises(InputError, match="at least 8"):
        make_transform(A).fit(x[:6], y[:6])
    with pytest.raises(InputError, match="paired"):
        make_transform(A).fit(x, y[:50])
    with pytest.raises(InputError, match="labels"):
        make_transform(A).fit(x, y[:5], labels=np.full(len(x), 7))
    with pytest.raises(InputError, match="in memory"):
        make_transform(A).partial_fit(x, y)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            make_transform(A, device="cuda")


def _halves(n: int):
    h = n // 2
    return [(slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))]


def cross_fit(path: Path, method: str, **params) -> dict[str, float]:
    with np.load(path) as d:
        x, y = d["image"], d["text"]
    rows = []
    for train, test in _halves(len(x)):
        t = make_transform(method, **params).fit(x[train], y[train])
        c = evaluate(x[test], y[test], t)["corrected"]
        cm = c["cross_modal"]
        rows.append([c["gap"], cm["text_to_image"]["R@1"], cm["image_to_text"]["R@1"],
                     c["mixed"]["R@10"]])  # fmt: skip
    return dict(zip(("gap", "t2i", "i2t", "mixed"), np.mean(rows, axis=0), strict=True))


def test_coco_cross_fitted_figures() -> None:
    """Measured by `python -m benchmarks.adapter_table` (fixed halves): raw 0.849 / 0.696 /
    0.708 / 0.000, centering 0.149 / 0.664 / 0.700 / 0.720, adapter 0.180 / 0.672 / 0.728 /
    0.816 (gap, t2i R@1, i2t R@1, mixed R@10)."""
    got = cross_fit(COCO, A)
    want = {"gap": 0.180, "t2i": 0.672, "i2t": 0.728, "mixed": 0.816}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=0.02), (key, got)
    cen = cross_fit(COCO, "centering")
    assert got["mixed"] >= cen["mixed"] + 0.07  # beats centering on mixed-modality search
    assert got["i2t"] >= 0.708 - 0.01 and got["t2i"] >= cen["t2i"] - 0.01


def test_started_at_the_whitener_coco_keeps_it() -> None:
    """Measured: on COCO's first half the held-out objective never improves from the
    whitener (shrinkage 0.9), so early stopping returns the whitener itself."""
    with np.load(COCO) as d:
        x, y = d["image"][:125], d["text"][:125]
    t = make_transform(A, init="whiten").fit(x, y)
    assert t.fit_stats_["adapter"]["best_epoch"] == 0
    w = make_transform("whiten", shrinkage=0.9).fit(x, y)
    for modality, z in (("image", x), ("text", y)):
        np.testing.assert_allclose(t.transform(z, modality), w.transform(z, modality), atol=1e-5)


@pytest.mark.slow
def test_convirt_near_chance_does_no_harm() -> None:
    """ConVIRT (raw 0.824 / 0.046 / 0.016 / 0.020): adapter 0.100 / 0.044 / 0.050 / 0.120."""
    got = cross_fit(CONVIRT, A)
    want = {"gap": 0.100, "t2i": 0.044, "i2t": 0.050, "mixed": 0.120}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=0.015), (key, got)
    raw = cross_fit(CONVIRT, "identity")
    assert got["t2i"] >= raw["t2i"] - 0.01 and got["i2t"] >= raw["i2t"] - 0.01


def caption_topics(y: np.ndarray, classes: int = 10):
    from benchmarks.adapter_table import caption_classes

    return caption_classes(y, classes)


def test_labelled_calibration_trains_on_class_prompts() -> None:
    """Measured (benchmarks.adapter_table): held-out zero-shot top-1 over 10 caption topics,
    raw 0.812, adapter trained on (image, class prompt) pairs 0.808."""
    with np.load(COCO) as d:
        x, y = d["image"], d["text"]
    prompts, labels = caption_topics(y)
    accs = []
    for train, test in _halves(len(x)):
        t = make_transform(A).fit(x[train], prompts, labels=labels[train])
        assert t.fit_stats_["adapter"]["mode"] == "labels"
        ci, ct = t.transform(x[test], "image"), t.transform(prompts, "text")
        accs.append(zeroshot_accuracy(ci, ct, labels[test]))
    assert np.mean(accs) == pytest.approx(0.808, abs=0.02)


def test_cli_fit_with_labels_and_eval(tmp_path: Path) -> None:
    runner = CliRunner()
    with np.load(COCO) as d:
        x, y = d["image"][:80], d["text"][:80]
    np.save(tmp_path / "img.npy", x)
    np.save(tmp_path / "txt.npy", y)
    np.save(tmp_path / "cls.npy", y[:4])
    np.save(tmp_path / "lab.npy", np.arange(80) % 4)
    art = tmp_path / "a.gapfix"
    args = ["fit", "--image", str(tmp_path / "img.npy"), "--method", A, "--out", str(art),
            "--param", "epochs=5"]  # fmt: skip
    r = runner.invoke(app, [*args, "--text", str(tmp_path / "txt.npy")])
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.stdout and load_transform(art).method == A
    r = runner.invoke(app, [*args, "--text", str(tmp_path / "cls.npy"), "--labels",
                            str(tmp_path / "lab.npy")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_transform(art).fit_stats_["adapter"]["mode"] == "labels"
    art.unlink()
    bad = runner.invoke(app, [*args, "--text", str(tmp_path / "txt.npy"), "--param", "init=x"])
    assert bad.exit_code == 2 and bad.stderr.startswith("gapfix: error:") and not art.exists()
    r = runner.invoke(app, ["fit", "--image", str(tmp_path / "img.npy"), "--text",
                            str(tmp_path / "cls.npy"), "--labels", str(tmp_path / "lab.npy"),
                            "--method", "centering", "--out", str(art)])  # fmt: skip
    assert r.exit_code == 2 and "--labels" in r.stderr and not art.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_matches_cpu_quality() -> None:
    cpu = cross_fit(COCO, A)
    gpu = cross_fit(COCO, A, device="cuda")
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=0.03), (key, cpu, gpu)
    with np.load(COCO) as d:
        x, y = d["image"][:125], d["text"][:125]
    a = make_transform(A, device="cuda").fit(x, y)
    b = make_transform(A, device="cuda").fit(x, y)
    for name in a.fitted_arrays:  # deterministic on the GPU too
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-6)


def test_service_fits_and_applies_the_adapter(tmp_path: Path) -> None:
    """The store fits the adapter on its document pairs and corrects with the stored map."""
    from tests.test_api import add_gapped, client_for, rand, unit

    with client_for(tmp_path) as client:
        img, _ = add_gapped(client)
        body = {"method": A, "params": {"epochs": 5, "seed": 2}}
        r = client.post("/v1/collections/c/transform", json=body)
        assert r.status_code in (200, 202), r.text
        deadline = time.monotonic() + 120
        while (info := client.get("/v1/collections/c/transform").json())["status"] != "active":
            assert info["error"] is None and time.monotonic() < deadline, info
            time.sleep(0.1)
        assert info["active"]["method"] == A
        assert info["active"]["fit_stats"]["adapter"]["mode"] == "pairs"
        pair_txt = unit(img + 0.3 * rand(30, seed=3) - np.eye(32, dtype=np.float32)[0] * 4)
        local = make_transform(A, epochs=5, seed=2).fit(img, pair_txt)
        r = client.post("/v1/correct", json={"modality": "image", "vectors": img[:3].tolist(),
                                              "collection": "c"})  # fmt: skip
        assert r.json()["transform"] == A
        np.testing.assert_allclose(
            r.json()["vectors"], local.transform(img[:3], "image"), atol=1e-5
        )
        bad = client.post(
            "/v1/collections/c/transform", json={"method": A, "params": {"init": "x"}}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "init"
