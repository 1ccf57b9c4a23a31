"""`make gpu-check` (benchmarks/gpu_check.py): a clean no-op without CUDA, real figures with it."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_without_cuda_it_says_so_and_checks_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["--no-tests"]) == 0
    assert capsys.readouterr().out.strip() == (
        "gpu-check: no CUDA GPU on this machine; nothing to check"
    )
    assert not (tmp_path / "bench-results").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_benchmarks_measure_against_their_baselines():
    results = gpu_check.bench_apply(n=65_536) + gpu_check.bench_encode(batch=8)
    assert [r.name for r in results] == [
        "gpu apply centering",
        "gpu apply whiten",
        "encode ViT-B-32 fp16",
        "encode ViT-B-32 bf16",
    ]
    assert all(r.value > 0 and r.baseline and r.baseline > 0 for r in results)
