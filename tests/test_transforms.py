"""Transforms: estimator contract, each method's math, streaming, dtype/backends, artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gapfix
from gapfix import load_transform, make_transform
from gapfix.errors import ArtifactError, InputError, NotFittedError
from gapfix.transforms import METHODS, TRANSFORMS
from tests.conftest import make_gapped

SIMPLE = [
    "identity",
    "mean-shift",
    "target-gap",
    "centering",
    "standardize",
    "whiten",
    "ablate-dims",
    "procrustes",
]


def gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def test_registry_names_match_cli() -> None:
    assert set(METHODS) == {*SIMPLE, "contrastive-adapter", "auto"}
    for name, cls in TRANSFORMS.items():
        assert cls.method == name


@pytest.mark.parametrize("method", SIMPLE)
def test_estimator_contract(method: str, gapped) -> None:
    x, y = gapped
    t = make_transform(method)
    with pytest.raises(NotFittedError):
        t.transform(x, "image")
    x_before, y_before = x.copy(), y.copy()
    assert t.fit(x, y) is t
    assert np.array_equal(x, x_before) and np.array_equal(y, y_before)  # inputs untouched
    for modality, z in (("image", x), ("text", y)):
        out = t.transform(z, modality)
        assert out.dtype == np.float32 and out.shape == z.shape
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert t.dim_ == x.shape[1]
    assert t.fit_stats_["n_image"] == len(x) and t.fit_stats_["gap_before"] > 0
    assert all(name.endswith("_") for name in t.fitted_arrays)


def test_mean_shift_formula(gapped) -> None:
    x, y = gapped
    t = make_transform("mean-shift", lam=1.0).fit(x, y)
    g = x.astype(np.float64).mean(0) - y.astype(np.float64).mean(0)
    want = x - g / 2
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(t.transform(x, "image"), want, atol=1e-5)
    # lam = 1 moves the centroids together before renormalisation
    raw = make_transform("mean-shift", lam=1.0, renormalize=False).fit(x, y)
    assert gap(raw.transform(x, "image"), raw.transform(y, "text")) < 1e-5
    wider = make_transform("mean-shift", lam=-0.5).fit(x, y)
    assert gap(wider.transform(x, "image"), wider.transform(y, "text")) > gap(x, y)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("target", [0.05, 0.3, 0.9])
def test_target_gap_hits_target(target: float, renormalize: bool) -> None:
    x, y = make_gapped(300, gap=0.5, seed=3)
    t = make_transform("target-gap", gap=target, renormalize=renormalize).fit(x, y)
    assert abs(gap(t.transform(x, "image"), t.transform(y, "text")) - target) < 2e-3
    if target > gap(x, y):
        assert float(t.lam_[0]) < 0


def test_target_gap_unreachable() -> None:
    x, y = make_gapped(100, seed=1)
    with pytest.raises(InputError, match="below the smallest gap"):
        make_transform("target-gap", gap=0.0, tol=1e-9).fit(x, y)


def test_centering_and_query_mean(gapped) -> None:
    x, y = gapped
    t = make_transform("centering").fit(x, y)
    assert gap(t.transform(x, "image"), t.transform(y, "text")) < 0.2 * gap(x, y)
    q = y[:50] + 0.1
    tq = make_transform("centering", query_text_mean=True).fit(x, y, query_text=q)
    u = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)  # unit rows
    want = u - u.mean(0)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(tq.transform(q, "text", role="query"), want, atol=1e-5)
    with pytest.raises(InputError):
        make_transform("centering", query_text_mean=True).fit(x, y)


def test_standardize_and_whiten_statistics(gapped) -> None:
    x, y = gapped
    s = make_transform("standardize", renormalize=False).fit(x, y)
    z = s.transform(x, "image")
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    w = make_transform("whiten", shrinkage=0.0, renormalize=False).fit(x, y)
    zw = w.transform(x, "image").astype(np.float64)
    cov = np.cov(zw.T, bias=True)
    np.testing.assert_allclose(cov, np.eye(x.shape[1]), atol=2e-3)
    with pytest.raises(InputError):
        make_transform("whiten", shrinkage=1.5).fit(x, y)


def test_ablate_dims_zeroes_gap_dims(gapped) -> None:
    x, y = gapped
    t = make_transform("ablate-dims", k=1).fit(x, y)
    assert t.dims_.tolist() == [0]  # the synthetic gap lives in dimension 0
    assert np.all(t.transform(x, "image")[:, 0] == 0)
    with pytest.raises(InputError):
        make_transform("ablate-dims", k=0).fit(x, y)


def test_procrustes_recovers_rotation() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((500, 16)) + 0.3  # a cone, as embeddings sit in
    y = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    rot, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    x = (y @ rot.T).astype(np.float32)  # image = rotated text (its own cone)
    t = make_transform("procrustes", renormalize=False).fit(x, y)
    np.testing.assert_allclose(t.rotation_, rot, atol=1e-4)
    with pytest.raises(InputError, match="paired"):
        make_transform("procrustes").fit(x, y[:-1])


def test_streaming_fit_matches_batch() -> None:
    x, y = make_gapped(5000, d=32, seed=4)
    for method in ("centering", "standardize", "whiten", "mean-shift", "procrustes"):
        batch = make_transform(method).fit(x, y)
        stream = make_transform(method)
        for i in range(0, 5000, 700):
            stream.partial_fit(image=x[i : i + 700], text=y[i : i + 700])
        np.testing.assert_allclose(
            stream.transform(x, "image"), batch.transform(x, "image"), atol=1e-5
        )
        np.testing.assert_allclose(
            stream.transform(y, "text"), batch.transform(y, "text"), atol=1e-5
        )
    with pytest.raises(InputError):
        make_transform("auto").partial_fit(image=x, text=y)


def test_large_input_processed_in_blocks(tmp_path) -> None:
    x, y = make_gapped(300, d=16)
    t = make_transform("whiten").fit(x, y)
    big = np.lib.format.open_memmap(
        tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(10_000, 16)
    )
    big[:] = np.tile(x, (34, 1))[:10_000]
    out = t.transform(big, "image")
    np.testing.assert_allclose(out[:300], t.transform(x, "image"), atol=1e-6)


def test_float64_and_list_input(gapped) -> None:
    x, y = gapped
    t = make_transform("centering").fit(x.astype(np.float64), y.tolist())
    assert t.transform(x.astype(np.float64), "image").dtype == np.float32


@pytest.mark.parametrize("method", SIMPLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_torch_in_torch_out(gapped, method: str, dtype: torch.dtype) -> None:
    x, y = gapped
    t = make_transform(method).fit(x, y)
    zt = torch.from_numpy(x).to(dtype)
    before = zt.clone()
    for modality in ("image", "text"):
        out = t.transform(zt, modality)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.device == zt.device and out.data_ptr() != zt.data_ptr()
        want = t.transform(zt.to(torch.float32).numpy(), modality)
        np.testing.assert_allclose(out.numpy(), want, atol=1e-5)
    assert torch.equal(zt, before)  # the input is never modified


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("mean-shift", {"lam": float("nan")}),
        ("mean-shift", {"lam": 1e30}),
        ("mean-shift", {"lam": "inf"}),
        ("target-gap", {"gap": 2.5}),
        ("target-gap", {"gap": -0.1}),
        ("standardize", {"eps": -1.0}),
        ("whiten", {"eps": float("nan")}),
        ("whiten", {"shrinkage": 1.5}),
        ("ablate-dims", {"k": 0}),
        ("auto", {"folds": 1}),
        ("auto", {"tolerance": -0.5}),
        ("auto", {"seed": -1}),
    ],
)
def test_out_of_range_params_are_refused_before_fitting(gapped, method: str, params) -> None:
    name = next(iter(params))
    with pytest.raises(InputError, match=f"parameter '{name}' .* must be in"):
        make_transform(method, **params)
    t = TRANSFORMS[method](**{name: float(params[name])})  # built directly: fit refuses it
    with pytest.raises(InputError, match="must be in"):
        t.fit(*gapped)


@pytest.mark.parametrize("method", SIMPLE)
def test_query_role_changes_nothing_without_a_query_mean(gapped, method: str) -> None:
    # regression: role="query" on an image query once selected the text-side map
    x, y = gapped
    t = make_transform(method).fit(x, y)
    for z, modality in ((x, "image"), (y, "text")):
        plain = t.transform(z, modality)
        for role in ("query", "corpus"):
            np.testing.assert_array_equal(t.transform(z, modality, role=role), plain)
    with pytest.raises(InputError, match="role"):
        t.transform(x, "image", role="queries")


def test_torch_exact_under_autocast(gapped) -> None:
    # An encoder's autocast context must not leak into the correction (bf16 matmul: ~3e-3 off).
    x, y = gapped
    t = make_transform("whiten").fit(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = t.transform(torch.from_numpy(x), "image")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), t.transform(x, "image"), atol=1e-5)


@pytest.fixture
def tf32_allowed():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_setting_is_detected(tf32_allowed) -> None:
    from gapfix.transforms.base import _tf32_possible

    assert _tf32_possible(torch, torch.device("cuda"))
    assert not _tf32_possible(torch, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_gpu_matches_cpu(gapped, precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x, y = gapped
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)  # "high" lets CUDA matmuls use TF32
    try:
        for method in ("centering", "mean-shift", "standardize", "whiten", "procrustes"):
            t = make_transform(method).fit(x, y)
            cpu = t.transform(x, "image")
            gpu = t.transform(torch.from_numpy(x).cuda(), "image")
            assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
            np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-5)
            with torch.autocast("cuda", dtype=torch.float16):
                half = t.transform(torch.from_numpy(x).cuda().half(), "image")
            want = t.transform(x.astype(np.float16).astype(np.float32), "image")
            np.testing.assert_allclose(half.cpu().numpy(), want, atol=1e-5)
    finally:
        torch.set_float32_matmul_precision(before)


def test_bad_inputs(gapped) -> None:
    x, y = gapped
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="row 3"):
        make_transform("centering").fit(bad, y)
    zero = x.copy()
    zero[5] = 0
    with pytest.raises(InputError, match="zero vector"):
        make_transform("centering").fit(zero, y)
    with pytest.raises(InputError, match="2-D"):
        make_transform("centering").fit(x[0], y)
    with pytest.raises(InputError, match="at least 2 rows"):
        make_transform("centering").fit(x[:1], y)
    with pytest.raises(InputError, match="dimension"):
        make_transform("centering").fit(x, y[:, :10])
    with pytest.raises(InputError, match="unknown method"):
        make_transform("nope")
    with pytest.raises(InputError, match="unknown parameter"):
        make_transform("mean-shift", lamda=2)
    with pytest.raises(InputError, match="must be a float"):
        make_transform("mean-shift", lam="abc")
    t = make_transform("centering").fit(x, y)
    with pytest.raises(InputError, match=r"dimension 10 .* dimension 64"):
        t.transform(x[:, :10], "image")
    with pytest.raises(InputError, match="modality"):
        t.transform(x, "audio")


@pytest.mark.parametrize("method", [*SIMPLE, "auto"])
def test_artifact_round_trip(method: str, tmp_path, gapped) -> None:
    x, y = gapped
    t = make_transform(method).fit(x, y)
    path = tmp_path / "t.gapfix"
    t.save(path, model_id="ViT-B-32/laion2b_s34b_b79k")
    loaded = load_transform(path)
    assert loaded.method == method
    assert loaded.get_params() == t.get_params()
    assert loaded.fit_stats_["gap_after"] == pytest.approx(t.fit_stats_["gap_after"])
    assert loaded.model_id == "ViT-B-32/laion2b_s34b_b79k"
    for modality, z in (("image", x), ("text", y)):
        np.testing.assert_array_equal(loaded.transform(z, modality), t.transform(z, modality))
    if method == "auto":
        assert loaded.fit_table_ == t.fit_table_ and loaded.chosen_ == t.chosen_
    assert [p.name for p in tmp_path.iterdir()] == ["t.gapfix"]  # no temp file left


def test_artifact_refusals(tmp_path, gapped) -> None:
    import json

    from safetensors.numpy import load_file, save_file

    x, y = gapped
    path = tmp_path / "t.gapfix"
    make_transform("centering").fit(x, y).save(path)
    from gapfix.transforms.artifact import read_metadata

    meta = read_metadata(path)
    assert meta["format_version"].startswith("1.") and meta["gapfix_version"] == gapfix.__version__
    assert meta["fit_stats"]["n_text"] == len(y)
    meta["format_version"] = "2.0"
    future = tmp_path / "future.gapfix"
    save_file(load_file(path), future, metadata={"gapfix": json.dumps(meta)})
    with pytest.raises(ArtifactError, match=r"format version 2\.0"):
        load_transform(future)
    junk = tmp_path / "junk.gapfix"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError):
        load_transform(junk)
    with pytest.raises(ArtifactError, match="not found"):
        load_transform(tmp_path / "missing.gapfix")
    # pickle is never involved: the file is a plain safetensors header + raw arrays
    assert path.read_bytes()[8:9] == b"{"


def test_auto_skips_candidates_the_dimension_cannot_take() -> None:
    x, y = make_gapped(60, d=8, seed=5)
    t = make_transform("auto", folds=2, repeats=1).fit(x, y)
    assert all(r["params"].get("k", 0) < 8 for r in t.fit_table_)
    assert t.transform(x, "image").shape == x.shape


def test_parallel_kernel_matches_serial() -> None:
    from gapfix.kernels import PARALLEL_MIN_ROWS

    x, y = make_gapped(PARALLEL_MIN_ROWS + 100, d=16, seed=6)
    for method in ("centering", "standardize"):
        t = make_transform(method).fit(x[:1000], y[:1000])
        whole = t.transform(x, "image")  # parallel path
        parts = np.concatenate(
            [t.transform(x[i : i + 5000], "image") for i in range(0, len(x), 5000)]
        )
        np.testing.assert_allclose(whole, parts, atol=1e-6)


def test_auto_checks_objective_and_methods_before_fitting(gapped) -> None:
    x, y = gapped
    with pytest.raises(InputError, match="unknown objective 'nope'"):
        make_transform("auto", objective="nope")
    with pytest.raises(InputError, match="unknown methods for auto: whitn"):
        make_transform("auto", methods="centering,whitn")
    with pytest.raises(InputError, match="must be comma-separated method names or a list"):
        make_transform("auto", methods=[1, 2])
    as_list = make_transform("auto", methods=["centering", "whiten"], folds=2, repeats=1)
    as_text = make_transform("auto", methods="centering, whiten", folds=2, repeats=1)
    tried = [{row["method"] for row in t.fit(x, y).fit_table_} for t in (as_list, as_text)]
    assert tried[0] == tried[1] == {"identity", "centering", "whiten"}


def test_auto_cross_validates_what_it_returns(gapped) -> None:
    """``renormalize=False`` reaches the candidates: the table scores unrenormalised output."""
    x, y = gapped
    kw = {"methods": "centering", "folds": 2, "repeats": 1}
    on = make_transform("auto", **kw).fit(x, y)
    off = make_transform("auto", renormalize=False, **kw).fit(x, y)
    row = lambda t: next(r for r in t.fit_table_ if r["method"] == "centering")  # noqa: E731
    assert row(on)["gap"] != pytest.approx(row(off)["gap"], abs=1e-6)
    assert off.best_.renormalize is False


@pytest.mark.parametrize(
    "method", ["centering", "mean-shift", "standardize", "whiten", "procrustes"]
)
def test_rows_of_any_length_map_like_their_unit_rows(gapped, method: str, monkeypatch) -> None:
    """Transforms act on directions, as `gapfix stats` and the store read embeddings:
    unnormalised rows (open_clip without normalize=True) fit and map like their unit rows."""
    from gapfix import kernels

    x, y = gapped
    rng = np.random.default_rng(5)
    sx = (x * rng.uniform(0.2, 15, (len(x), 1))).astype(np.float32)
    sy = (y * rng.uniform(0.2, 15, (len(y), 1))).astype(np.float32)
    for renormalize in (True, False):
        unit_fit = make_transform(method, renormalize=renormalize).fit(x, y)
        scaled_fit = make_transform(method, renormalize=renormalize).fit(sx, sy)
        gaps = [t.fit_stats_["gap_before"] for t in (unit_fit, scaled_fit)]
        assert gaps[1] == pytest.approx(gaps[0], abs=1e-5)
        for modality, unit, scaled in (("image", x, sx), ("text", y, sy)):
            want = unit_fit.transform(unit, modality)
            np.testing.assert_allclose(scaled_fit.transform(unit, modality), want, atol=1e-5)
            np.testing.assert_allclose(unit_fit.transform(scaled, modality), want, atol=1e-5)
            got = unit_fit.transform(torch.from_numpy(scaled), modality).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
            monkeypatch.setattr(kernels, "HAVE_NUMBA", False)  # the blocked numpy fallback
            np.testing.assert_allclose(unit_fit.transform(scaled, modality), want, atol=1e-5)
            monkeypatch.setattr(kernels, "HAVE_NUMBA", True)
            monkeypatch.setattr(kernels, "PARALLEL_MIN_ROWS", 1)  # the parallel kernel
            np.testing.assert_allclose(unit_fit.transform(scaled, modality), want, atol=1e-5)
            monkeypatch.setattr(kernels, "PARALLEL_MIN_ROWS", 65_536)


@pytest.mark.parametrize(("bi", "bt"), [(0.7, 1.0), (1.0, 0.8), (0.5, 0.5)])
def test_partial_whitening_blends_each_row_with_its_whitened_image(tmp_path, bi, bt) -> None:
    """strength b: y = n((1 - b) u + b (u - mean) W / rms), rms the whitened rows' RMS norm;
    it is one affine map, so every apply path and the artifact carry it unchanged."""
    x, y = make_gapped(300, d=16, seed=21)
    full = make_transform("whiten", shrinkage=0.5).fit(x, y)
    t = make_transform("whiten", shrinkage=0.5, image_strength=bi, text_strength=bt).fit(x, y)
    for i, (z, modality, b) in enumerate(((x, "image", bi), (y, "text", bt))):
        u = z / np.linalg.norm(z, axis=1, keepdims=True)
        mean = (full.mean_image_, full.mean_text_)[i].astype(np.float64)
        w = (full.whitener_image_, full.whitener_text_)[i].astype(np.float64)
        whitened = (u - mean) @ w
        rms = np.sqrt(np.mean(np.sum(whitened**2, axis=1)))
        assert t.rms_[i] == pytest.approx(rms, rel=1e-4)
        want = (1 - b) * u + b * whitened / rms
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(t.transform(z, modality), want, atol=2e-5)
        np.testing.assert_allclose(
            t.transform(torch.from_numpy(z), modality).numpy(), want, atol=2e-5
        )
    t.save(tmp_path / "p.gapfix")
    back = load_transform(tmp_path / "p.gapfix")
    assert (back.image_strength, back.text_strength) == (bi, bt)
    np.testing.assert_array_equal(back.transform(x, "image"), t.transform(x, "image"))
    with pytest.raises(InputError, match="image_strength"):
        make_transform("whiten", image_strength=0.0)


def test_partial_whitening_without_its_scale_is_refused(tmp_path) -> None:
    import json

    from safetensors.numpy import load_file, save_file

    from gapfix.transforms.artifact import read_metadata

    x, y = make_gapped(60, d=8, seed=9)
    make_transform("whiten", shrinkage=0.5, image_strength=0.5).fit(x, y).save(tmp_path / "a")
    arrays = load_file(tmp_path / "a")
    del arrays["rms_"]
    meta = read_metadata(tmp_path / "a")
    save_file(arrays, tmp_path / "b", metadata={"gapfix": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="rms_"):
        load_transform(tmp_path / "b")
