"""JPEG draft decoding (`decode_image(draft=...)`) and its use by `gapfix embed`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gapfix.encoders import decode_image, load_encoder
from gapfix.encoders.testing import register_tiny_model
from gapfix.jobs import EmbedOptions, run_embed
from gapfix.jobs.testing import image_bytes, read_rows

TINY = register_tiny_model()


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return image_bytes(3, (2000, 1500), fmt="JPEG")


def test_draft_decodes_jpeg_smaller_but_not_below_the_size(big_jpeg):
    assert decode_image(big_jpeg).size == (2000, 1500)
    assert decode_image(big_jpeg, draft=224).size == (500, 375)  # 1/4; 1/8 would be < 224
    assert decode_image(big_jpeg, draft=400).size == (1000, 750)
    small = image_bytes(1, (320, 240), fmt="JPEG")
    assert decode_image(small, draft=224).size == (320, 240)  # cannot shrink: full decode
    png = image_bytes(2, (900, 600), fmt="PNG")
    assert decode_image(png, draft=224).size == (900, 600)  # JPEG only


def test_embed_drafts_by_default_and_exact_on_request(big_jpeg, tmp_path):
    torch.set_num_threads(1)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(big_jpeg)
    (tmp_path / "imgs" / "b.jpg").write_bytes(image_bytes(4, (1600, 1200), fmt="JPEG"))
    enc = load_encoder(TINY, "none", device="cpu")
    common = dict(model=TINY, pretrained="none", workers=0, progress="off")
    fast = read_rows_of(run_embed, tmp_path / "imgs", tmp_path / "fast", EmbedOptions(**common),
                        enc)  # fmt: skip
    exact = read_rows_of(run_embed, tmp_path / "imgs", tmp_path / "exact",
                         EmbedOptions(**common, exact_decode=True), enc)  # fmt: skip
    files = [big_jpeg, (tmp_path / "imgs" / "b.jpg").read_bytes()]
    np.testing.assert_allclose(exact, enc.encode_images(files), atol=1e-6)  # the service's
    cos = (fast * exact).sum(axis=1)
    assert not np.array_equal(fast, exact)  # decoded at 1/8 (tiny model: 32 px input)
    assert cos.min() > 0.9999, cos  # measured 0.99999 (noise images, the worst case)


def read_rows_of(run, src, out, opts, enc) -> np.ndarray:
    s = run(src, out, opts, encoder=enc, log=lambda _m: None)
    assert s["items"] == 2 and s["failures"] == 0
    rows = read_rows(out)
    assert rows.ids == ["a.jpg", "b.jpg"], rows.ids
    return np.asarray(rows.embeddings, dtype=np.float32)
