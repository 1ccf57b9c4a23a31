"""Store under concurrency and crashes: background rebuilds, atomic switch, kill -9 mid-ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from gapfix.store import ItemIn, Store
from gapfix.store.index import VectorIndex
from gapfix.store.items import encode_fids

FIXTURE = Path(__file__).parent / "fixtures" / "coco_val2017_clip_vitb16_dev250.npz"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ids(rows) -> list[list[str]]:
    return [[h.id for h in r] for r in rows]


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(FIXTURE)
    return unit(d["image"]), unit(d["text"])


class Gate:
    """Holds ``VectorIndex.build`` (the background rebuild) until released."""

    def __init__(self, monkeypatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        orig = VectorIndex.build.__func__

        def build(cls, *args, **kwargs):
            self.entered.set()
            cancelled = args[6] if len(args) > 6 else kwargs.get("cancelled")
            while not self.release.wait(0.01):
                if cancelled is not None and cancelled():
                    break  # closed mid-rebuild: let the job notice and stop
            return orig(cls, *args, **kwargs)

        monkeypatch.setattr(VectorIndex, "build", classmethod(build))


def test_rebuild_in_background_keeps_serving_and_switches_atomically(
    tmp_path: Path, pairs, monkeypatch
) -> None:
    img, txt = pairs
    q = txt[200:216]
    with Store(tmp_path, flush_interval=None) as s:
        c = s.create_collection("bg")
        c.add([ItemIn(f"img{n}", image=img[n]) for n in range(150)])
        c.add([ItemIn(f"txt{n}", text=txt[n]) for n in range(150)])
        old = ids(c.search(q, "text", k=10).hits)
        gate = Gate(monkeypatch)
        assert c.fit_transform("centering", wait_seconds=0) is False
        assert gate.entered.wait(30)
        assert c.transform_status["status"] == "rebuilding"
        assert c.active_transform is None

        errors: list[BaseException] = []
        seen: list[list[list[str]]] = []
        stop = threading.Event()

        def searcher() -> None:
            try:
                while not stop.is_set():
                    seen.append(ids(c.search(q, "text", k=10).hits))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=searcher) for _ in range(3)]
        for t in threads:
            t.start()
        while len(seen) < 30:
            pass
        assert all(r == old for r in seen)  # the old index serves while the new one builds
        # writes during the rebuild reach both the live index and the new one
        c.add([ItemIn(f"img{n}", image=img[n]) for n in range(150, 250)])
        c.delete_items(["txt3", "img7"])
        c.add([ItemIn("img0", text=txt[240], metadata={"upserted": True})], upsert=True)
        before_switch = ids(c.search(q, "text", k=10).hits)
        seen.clear()
        gate.release.set()
        assert c.wait_transform(60)
        stop.set()
        for t in threads:
            t.join()
        assert not errors
        after = ids(c.search(q, "text", k=10).hits)
        # each search saw either the whole old state or the whole new one, never a mix
        assert {tuple(map(tuple, r)) for r in seen} <= {
            tuple(map(tuple, before_switch)),
            tuple(map(tuple, after)),
        }
        # the new state is exactly brute force over the corrected final corpus
        t = c.active_transform
        names = [f"img{n}" for n in range(1, 250) if n != 7] + ["img0"]
        names += [f"txt{n}" for n in range(150) if n != 3]
        corpus = np.concatenate(
            [
                t.transform(img[[n for n in range(1, 250) if n != 7]], "image"),
                t.transform(txt[[240]], "text"),
                t.transform(txt[[n for n in range(150) if n != 3]], "text"),
            ]
        )
        want = np.argsort(-(t.transform(q, "text") @ corpus.T), axis=1)[:, :10]
        assert after == [[names[j] for j in row] for row in want]
        assert c.count() == 398


def test_interrupted_switch_resumes_after_restart(tmp_path: Path, pairs, monkeypatch) -> None:
    img, txt = pairs
    with Store(tmp_path, flush_interval=None) as s:
        c = s.create_collection("resume", index="hnsw")
        c.add([ItemIn(f"d{n}", image=img[n], text=txt[n]) for n in range(120)])
        gate = Gate(monkeypatch)
        assert c.fit_transform("procrustes", wait_seconds=0) is False
        assert gate.entered.wait(30)
        c.add([ItemIn("late", text=txt[130])])
    # closed mid-rebuild (as a crash would): the artifact and the pending switch are durable
    gate.release.set()
    monkeypatch.undo()
    with Store(tmp_path, flush_interval=None) as s:
        c = s.get("resume")
        assert c.wait_transform(60)
        assert c.active_transform.method == "procrustes"
        assert c.search(txt[130], "text", k=1).hits[0][0].id == "late"
        assert c.count() == 121


def test_concurrent_writers_and_readers_stay_consistent(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng.standard_normal((400, 24)))
    with Store(tmp_path, flush_interval=0.01) as s:  # flushes race with the writes too
        c = s.create_collection("cc", index="hnsw")
        c.add([ItemIn(f"seed{n}", image=vecs[n]) for n in range(50)])
        errors: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                for b in range(5):
                    lo = 50 + w * 50 + b * 10
                    c.add([ItemIn(f"w{w}-{n}", text=vecs[n]) for n in range(lo, lo + 10)])
                    c.delete_item(f"w{w}-{lo}")
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(40):
                    rows = c.search(vecs[:8], "image", k=5).hits
                    assert all(len(r) == 5 for r in rows)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        threads += [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert c.count() == 50 + 3 * 5 * 9
    with Store(tmp_path, flush_interval=None) as s:
        c = s.get("cc")
        assert c.count() == 185 and c.repair_report["raw"] == "loaded"


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gapfix.store import ItemIn, Store

    store = Store(sys.argv[1], flush_interval=0.02)
    c = store.create_collection("k", index=sys.argv[2])
    b = 0
    while True:
        v = np.random.default_rng(b).standard_normal((40, 16)).astype("float32")
        items = [
            ItemIn(f"b{b}-{j}", image=v[j]) if j % 2 else ItemIn(f"b{b}-{j}", text=v[j])
            for j in range(40)
        ]
        c.add(items)
        if b == 3:  # activate a transform first (deterministic), then keep ingesting
            assert c.fit_transform("centering", wait_seconds=120)
        print(b, flush=True)
        b += 1
    """
)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_kill9_mid_ingest_then_reopen_is_consistent(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "ingest.py"
    script.write_text(KILL_SCRIPT)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    committed = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            committed = int(line)
            if committed >= 25:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert committed >= 25
    with Store(data, flush_interval=None) as s:
        c = s.get("k")
        n = c.count()
        assert n % 40 == 0  # batches are all or nothing
        assert committed + 1 <= n // 40 <= committed + 2  # at most the batch in flight is lost
        assert c.wait_transform(60) and c.active_transform.method == "centering"
        seqs, codes = c._db.seqs_and_codes(c._db._w)
        want = np.sort(encode_fids(seqs, codes))
        for idx in (c._raw, c._view.corrected):
            assert np.array_equal(np.sort(idx.live_ids()), want)
        last = n // 40 - 1
        v = np.random.default_rng(last).standard_normal((40, 16)).astype("float32")
        assert c.search(v[1], "image", k=1, corrected=False).hits[0][0].id == f"b{last}-1"
        assert c.search(v[1], "image", k=1).hits[0][0].id == f"b{last}-1"
        item = c.get_item(f"b{last}-2")
        assert np.allclose(item.text, unit(v[2]), atol=1e-6)


def test_deleting_a_collection_under_concurrent_reads_does_not_crash(tmp_path: Path) -> None:
    """Closing the SQLite connections other threads were reading through was a use-after-free
    (SIGSEGV); readers now see NotFoundError and the process lives on. In a subprocess, so a
    crash fails this test instead of killing the test run."""
    script = textwrap.dedent(
        """
        import sys, threading, time
        import numpy as np
        from gapfix.store import ItemIn, NotFoundError, Store

        x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
        store = Store(sys.argv[1], flush_interval=None)
        unexpected = []
        for _ in range(25):
            c = store.create_collection("c")
            c.add([ItemIn(f"i{i}", text=x[i], metadata={"i": i}) for i in range(2000)])
            stop = threading.Event()

            def read():
                while not stop.is_set():
                    try:
                        c.list_items(0, 2000)
                        c.get_item("i5")
                        c.raw_vectors()
                    except NotFoundError:
                        pass
                    except Exception as exc:
                        unexpected.append(repr(exc))
                        return

            readers = [threading.Thread(target=read) for _ in range(3)]
            for t in readers:
                t.start()
            time.sleep(0.02)
            store.delete_collection("c")
            stop.set()
            for t in readers:
                t.join()
        store.close()
        print("unexpected:", unexpected)
        sys.exit(1 if unexpected else 0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
