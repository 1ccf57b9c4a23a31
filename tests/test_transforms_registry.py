"""Named transforms in a data directory (``gapfix.transforms.registry``): same bytes /
other bytes / replace, validation by loading (nothing written on bad bytes), reopening,
background fits, and a writer killed with SIGKILL mid-replace leaving a loadable artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from gapfix import make_transform
from gapfix.errors import InputError
from gapfix.store import ConflictError, NotFoundError
from gapfix.transforms.artifact import transform_bytes
from gapfix.transforms.registry import TransformRegistry, fingerprint
from tests.conftest import make_gapped

D = 32


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_gapped(120, D)


def gauge(name: str, space: str) -> float | None:
    return REGISTRY.get_sample_value("gapfix_transform_gap", {"transform": name, "space": space})


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_put_same_other_replace_and_reopen(tmp_path: Path, data) -> None:
    img, txt = data
    a = transform_bytes(make_transform("centering").fit(img, txt))
    b = transform_bytes(make_transform("mean-shift").fit(img, txt))
    reg = TransformRegistry(tmp_path)
    entry, outcome = reg.put("coco", a)
    assert outcome == "created" and entry.fingerprint == fingerprint(a) and entry.dim == D
    info = entry.describe()
    assert info["method"] == "centering" and info["status"] == "ready"
    assert info["fit_stats"]["gap_before"] > 0.5 > 0.1 > info["fit_stats"]["gap_after"]
    assert reg.put("coco", a)[1] == "unchanged"
    with pytest.raises(ConflictError, match="other content"):
        reg.put("coco", b)
    assert reg.get("coco").fingerprint == fingerprint(a)
    entry, outcome = reg.put("coco", b, replace=True)
    assert outcome == "replaced" and entry.method == "mean-shift"
    # the gauges show gap before/after of what is registered now
    assert gauge("coco", "corrected") == pytest.approx(entry.meta["fit_stats"]["gap_after"])
    assert gauge("coco", "raw") == pytest.approx(entry.meta["fit_stats"]["gap_before"])
    reg.close()
    again = TransformRegistry(tmp_path)
    assert again.names() == ["coco"] and again.get("coco").fingerprint == fingerprint(b)
    x = img[:5]
    assert np.array_equal(again.get("coco").transform.transform(x, "image"),
                          entry.transform.transform(x, "image"))  # fmt: skip
    again.delete("coco")
    assert files(tmp_path) == [] and again.names() == []
    with pytest.raises(NotFoundError):
        again.delete("coco")
    assert gauge("coco", "raw") is None  # removed with the transform


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"", "empty"),
        (b"not a safetensors file at all", "not a gapfix transform"),
    ],
)
def test_bad_bytes_write_nothing(tmp_path: Path, blob: bytes, match: str) -> None:
    reg = TransformRegistry(tmp_path)
    with pytest.raises(InputError, match=match):
        reg.put("x", blob)
    assert files(tmp_path) == [] and reg.names() == []


def test_corrupt_arrays_and_bad_names_are_refused(tmp_path: Path, data) -> None:
    img, txt = data
    t = make_transform("centering").fit(img, txt)
    t.mean_image_ = np.full(D, np.nan, np.float32)  # a damaged artifact
    reg = TransformRegistry(tmp_path)
    with pytest.raises(InputError, match="NaN"):
        reg.put("x", transform_bytes(t))
    for name in ("", "a/b", "..", "x" * 65):
        with pytest.raises(InputError, match="invalid transform name"):
            reg.put(name, b"x")
    assert files(tmp_path) == []


def test_fit_sync_async_and_failure(tmp_path: Path, data) -> None:
    img, txt = data
    reg = TransformRegistry(tmp_path)
    assert reg.fit("c", "centering", img, txt, wait_seconds=10) is True
    assert reg.describe("c")["method"] == "centering"
    # auto in the background: not done at once, then registered
    assert reg.fit("a", "auto", img, txt, wait_seconds=0) is False
    assert reg.describe("a")["status"] == "fitting"
    with pytest.raises(ConflictError, match="already being fitted"):
        reg.fit("a", "centering", img, txt)
    deadline = time.monotonic() + 60
    while reg.describe("a")["status"] == "fitting" and time.monotonic() < deadline:
        time.sleep(0.05)
    info = reg.describe("a")
    assert info["status"] == "ready" and info["method"] == "auto" and "chosen" in info
    # bad input fails before anything starts
    with pytest.raises(InputError, match="unknown method"):
        reg.fit("z", "nope", img, txt)
    with pytest.raises(InputError):
        reg.fit("z", "procrustes", img, txt[:50])  # paired method, unpaired rows
    with pytest.raises(ConflictError):
        reg.fit("c", "mean-shift", img, txt)
    assert reg.names() == ["a", "c"]
    # query-text mean: only with centering's query_text_mean
    q = make_gapped(40, D, seed=3)[1]
    with pytest.raises(InputError, match="query_text"):
        reg.fit("q", "centering", img, txt, query_text=q)
    reg.fit("q", "centering", img, txt, params={"query_text_mean": True}, query_text=q)
    assert reg.describe("q")["has_query_text_mean"] is True
    reg.close()


def test_a_fit_failing_in_the_background_is_reported(tmp_path: Path, data, monkeypatch) -> None:
    from gapfix.transforms import Centering

    img, txt = data
    reg = TransformRegistry(tmp_path)
    release = threading.Event()

    def broken(self, *args, **kwargs):
        release.wait(10)
        raise RuntimeError("the fit broke")

    monkeypatch.setattr(Centering, "fit", broken)
    assert reg.fit("f", "centering", img, txt, wait_seconds=0) is False
    assert reg.describe("f")["status"] == "fitting"
    release.set()
    deadline = time.monotonic() + 10
    while reg.describe("f")["status"] == "fitting" and time.monotonic() < deadline:
        time.sleep(0.02)
    info = reg.describe("f")
    assert info["status"] == "failed" and "the fit broke" in info["error"]
    assert [t["name"] for t in reg.list_transforms()] == ["f"] and reg.names() == []
    assert files(tmp_path) == []
    reg.delete("f")  # clears the failed record
    with pytest.raises(NotFoundError):
        reg.describe("f")
    # a failure within the wait is raised to the caller and leaves no record
    release.set()
    with pytest.raises(RuntimeError, match="the fit broke"):
        reg.fit("g", "centering", img, txt, wait_seconds=10)
    assert reg.list_transforms() == []
    with pytest.raises(InputError, match="zeroshot"):
        reg.fit("z", "auto", img, txt, params={"objective": "zeroshot"})
    reg.close()


KILL_SCRIPT = """
import sys
from gapfix.transforms.registry import TransformRegistry
reg = TransformRegistry(sys.argv[1])
blobs = [open(p, "rb").read() for p in sys.argv[2:]]
print("ready", flush=True)
i = 0
while True:
    reg.put("t", blobs[i % len(blobs)], replace=True)
    i += 1
"""


def test_kill_9_during_replace_leaves_a_loadable_artifact(tmp_path: Path, data) -> None:
    img, txt = data
    blobs = []
    for k, method in enumerate(("centering", "whiten", "mean-shift")):
        p = tmp_path / f"{k}.gapfix"
        p.write_bytes(transform_bytes(make_transform(method).fit(img, txt)))
        blobs.append(p)
    folder = tmp_path / "transforms"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(folder), *map(str, blobs)],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.2 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reg = TransformRegistry(folder)  # removes the killed writer's temp files
        assert reg.names() == ["t"]
        assert reg.get("t").fingerprint in {fingerprint(p.read_bytes()) for p in blobs}
        assert files(folder) == ["t.gapfix"]
        reg.close()


def test_opening_reads_each_artifact_once(tmp_path: Path, data, monkeypatch) -> None:
    """The listing's fingerprint and the load share one read; a file replaced in between is
    read again (its size or mtime changed)."""
    img, txt = data
    reg = TransformRegistry(tmp_path)
    reg.put("a", transform_bytes(make_transform("centering").fit(img, txt)))
    reg.put("b", transform_bytes(make_transform("mean-shift").fit(img, txt)))
    reg.close()
    reads: list[str] = []
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        if self.suffix == ".gapfix":
            reads.append(self.name)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    again = TransformRegistry(tmp_path)
    assert again.names() == ["a", "b"] and sorted(reads) == ["a.gapfix", "b.gapfix"]
    store = again.store
    store.listing()
    other = transform_bytes(make_transform("standardize").fit(img, txt))
    (tmp_path / "a.gapfix").write_bytes(other)  # replaced behind the listing's back
    os.utime(tmp_path / "a.gapfix", ns=(1, 1))
    reads.clear()
    assert store.read("a") == other and reads == ["a.gapfix"]
    again.close()
