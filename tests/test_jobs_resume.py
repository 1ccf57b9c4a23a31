"""`gapfix embed` killed with SIGKILL mid-run, then rerun: same output as a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gapfix.jobs import EmbedOptions, read_manifest, run_embed
from gapfix.jobs import testing as T
from gapfix.jobs.failures import read_failures
from gapfix.jobs.shards import shard_row_counts

CLI = [
    sys.executable,
    "-c",
    "import sys; from gapfix.cli import main; sys.argv[0] = 'gapfix'; main()",
]


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_matches_a_clean_run(tmp_path):
    ckpt = T.write_tiny_checkpoint(tmp_path / "tiny.pt")
    T.make_image_folder(tmp_path / "imgs", n=160)  # + 4 bad files: 41 shards of 4
    args = [
        "embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "killed"),
        "--model", "gapfix-tiny", "--pretrained", ckpt, "--batch-size", "4",
        "--shard-size", "4", "--workers", "1", "--progress", "log",
    ]  # fmt: skip
    manifest = tmp_path / "killed" / "manifest.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only add overhead
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = json.loads(manifest.read_text())["totals"]["shards_done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= 5:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()

    # what the kill left: every shard the manifest lists is complete; nothing else counts
    m = read_manifest(manifest)
    assert not m["complete"] and 5 <= len(m["shards"]) < 41
    for rec in m["shards"]:
        assert shard_row_counts(tmp_path / "killed" / rec["file"], 32) == {
            k: rec["rows"].get(k, 0) for k in ("image", "text")
        }
    finished = len(m["shards"])

    rerun = subprocess.run(
        [*CLI, *args, "--json"], capture_output=True, text=True, timeout=300, env=env
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["shards_skipped"] == finished
    assert summary["shards_written"] == 41 - finished and summary["complete"]
    assert "resuming" in rerun.stderr

    import torch

    from gapfix.encoders import load_encoder

    clean = tmp_path / "clean"
    opts = EmbedOptions(
        model="gapfix-tiny", pretrained=ckpt, batch_size=4, shard_size=4, workers=1,
        progress="off",
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_embed(tmp_path / "imgs", clean, opts, encoder=load_encoder("gapfix-tiny", ckpt))
    finally:
        torch.set_num_threads(threads)
    a, b = T.read_rows(tmp_path / "killed"), T.read_rows(clean)
    assert a.ids == b.ids and a.modalities == b.modalities and len(a.ids) == 160
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    assert read_failures(tmp_path / "killed") == read_failures(clean)
    assert len(read_failures(clean)) == 4
    assert read_manifest(tmp_path / "killed")["totals"] == read_manifest(clean)["totals"]
