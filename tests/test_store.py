"""Store: collections, items, the three index kinds, filters, documents, transforms, files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gapfix import make_transform
from gapfix.errors import GapfixError, InputError, PayloadTooLargeError
from gapfix.metrics import COLLECTION_GAP, COLLECTION_ITEMS
from gapfix.store import ConflictError, ItemIn, NotFoundError, Store
from gapfix.store.index import VectorIndex

FIXTURE = Path(__file__).parent / "fixtures" / "coco_val2017_clip_vitb16_dev250.npz"
KINDS = ["flat", "hnsw", "ivfpq"]
SMALL_IVF = {"train_size": 200, "nprobe": 64}


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rand_unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(FIXTURE)
    return d["image"], d["text"]


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "data", flush_interval=None)
    yield s
    s.close()


def params_for(kind: str) -> dict | None:
    return SMALL_IVF if kind == "ivfpq" else None


def ids_of(hits) -> list[str]:
    return [h.id for h in hits]


# ---------------------------------------------------------------------- store lifecycle


def test_collection_lifecycle(tmp_path: Path) -> None:
    with Store(tmp_path / "d", flush_interval=None) as s:
        assert s.list_collections() == []
        c = s.create_collection("photos_1", index="hnsw")
        assert c.info()["index"] == "hnsw" and c.dim is None and c.count() == 0
        with pytest.raises(ConflictError):
            s.create_collection("photos_1")
        for bad in ("", "a b", "x" * 65, "../etc", "é"):
            with pytest.raises(InputError):
                s.create_collection(bad)
        with pytest.raises(InputError):
            s.create_collection("k", index="annoy")
        with pytest.raises(InputError):
            s.create_collection("k", index="hnsw", index_params={"nprobe": 3})
        with pytest.raises(NotFoundError):
            s.get("nope")
        with pytest.raises(NotFoundError):
            s.delete_collection("nope")
        s.create_collection("other", dim=8)
        assert [i["name"] for i in s.list_collections()] == ["other", "photos_1"]
        with pytest.raises(GapfixError, match="in use"):
            Store(tmp_path / "d")
        s.delete_collection("photos_1")
        with pytest.raises(NotFoundError):
            c.search(rand_unit(1, 8), "text")
        assert not (tmp_path / "d" / "collections" / "photos_1").exists()
    with Store(tmp_path / "d", flush_interval=None) as s:
        assert s.names() == ["other"] and s.get("other").dim == 8


# ---------------------------------------------------------------------- add / search / delete


@pytest.mark.parametrize("kind", KINDS)
def test_add_search_upsert_delete(store: Store, kind: str) -> None:
    c = store.create_collection("c", index=kind, index_params=params_for(kind))
    img, txt = rand_unit(150, seed=1), rand_unit(150, seed=2)
    items = [ItemIn(f"i{n}", image=img[n], metadata={"n": n}) for n in range(150)]
    items += [ItemIn(f"t{n}", text=txt[n]) for n in range(150)]
    assert c.add(items) == {"added": 300, "replaced": 0}
    assert c.counts() == {"image": 150, "text": 150, "document": 0} and c.dim == 32
    if kind == "ivfpq":
        assert c._raw.trained  # crossed train_size inside add
    hits = c.search(img[:5], "image", k=3).hits
    assert [h[0].id for h in hits] == [f"i{n}" for n in range(5)]
    assert hits[0][0].modality == "image" and hits[0][0].metadata == {"n": 0}
    if kind != "ivfpq":
        assert hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    only_text = c.search(img[:5], "image", k=10, modalities=["text"]).hits
    assert all(h.modality == "text" for row in only_text for h in row)
    assert all(len(row) == 10 for row in only_text)
    # upsert replaces the vector and metadata; without upsert the batch conflicts
    new_vec = rand_unit(1, seed=99)[0]
    with pytest.raises(ConflictError):
        c.add([ItemIn("i0", image=new_vec), ItemIn("fresh", text=new_vec)])
    assert c.count() == 300 and "fresh" not in ids_of(c.search(new_vec, "text", k=5).hits[0])
    assert c.add([ItemIn("i0", text=new_vec, metadata={"v": 2})], upsert=True) == {
        "added": 0,
        "replaced": 1,
    }
    top = c.search(new_vec, "text", k=1).hits[0][0]
    assert (top.id, top.modality, top.metadata) == ("i0", "text", {"v": 2})
    assert c.counts() == {"image": 149, "text": 151, "document": 0}
    c.delete_item("i1")
    assert "i1" not in ids_of(c.search(img[1], "image", k=5).hits[0])
    with pytest.raises(NotFoundError):
        c.delete_item("i1")
    with pytest.raises(NotFoundError):
        c.get_item("i1")
    assert c.delete_items(["i2", "missing"], missing_ok=True) == 1
    assert c.count() == 298
    item = c.get_item("i3")
    assert item.modality == "image" and np.allclose(item.image, img[3], atol=1e-6)
    by_id = c.search(item_id="i3", k=3).hits[0]
    assert "i3" not in ids_of(by_id) and len(by_id) == 3
    assert c.search(item_id="i3", k=1, exclude_self=False).hits[0][0].id == "i3"


@pytest.mark.parametrize("kind", KINDS)
def test_modality_filters_match_exact_search(store: Store, kind: str) -> None:
    c = store.create_collection("f", index=kind, index_params=params_for(kind))
    img, txt = rand_unit(120, seed=3), rand_unit(120, seed=4)
    items = [ItemIn(f"i{n}", image=img[n]) for n in range(120)]
    items += [ItemIn(f"t{n}", text=txt[n]) for n in range(60)]
    items += [ItemIn(f"d{n}", image=img[n], text=txt[n], weight=0.3) for n in range(60, 120)]
    c.add(items)
    q = rand_unit(4, seed=5)
    for mods in (["image"], ["text"], ["document"], ["image", "document"], ["text", "document"]):
        got = c.search(q, "image", k=5, modalities=mods).hits
        for row in got:
            assert {h.modality for h in row} <= set(mods) and len(row) == 5
        if kind == "flat":
            c._raw.use_selectors = False  # the over-fetch + filter path (what GPU search uses)
            assert [ids_of(r) for r in c.search(q, "image", k=5, modalities=mods).hits] == [
                ids_of(r) for r in got
            ]
            c._raw.use_selectors = True
    with pytest.raises(InputError):
        c.search(q, "image", modalities=["audio"])
    with pytest.raises(InputError):
        c.search(q, "document")
    with pytest.raises(InputError):
        c.search(q, "image", k=0)
    with pytest.raises(InputError):
        c.search(rand_unit(1, d=16), "image")


def test_documents_fuse_raw_and_corrected(store: Store, pairs) -> None:
    img, txt = pairs
    c = store.create_collection("docs")
    w = 0.7
    c.add([ItemIn(f"d{n}", image=img[n], text=txt[n], weight=w) for n in range(60)])
    c.add([ItemIn(f"x{n}", image=img[n]) for n in range(60, 120)])
    assert c.get_item("d0").weight == pytest.approx(w)
    fused = unit(w * img[5] + (1 - w) * txt[5])
    hit = c.search(fused, "image", k=1, corrected=False).hits[0][0]
    assert hit.id == "d5" and hit.score == pytest.approx(1.0, abs=1e-5)
    c.fit_transform("centering", wait_seconds=60)
    t = c.active_transform
    corr = unit(w * t.transform(img[5:6], "image") + (1 - w) * t.transform(txt[5:6], "text"))
    res = c.search(item_id="d5", k=1, exclude_self=False).hits[0][0]
    assert res.id == "d5" and res.score == pytest.approx(1.0, abs=1e-5)
    # the corrected index holds exactly normalise(w*T(img) + (1-w)*T(txt))
    scores, fids = c._view.corrected.search(corr, 1)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert c._resolve(scores, fids)[0][0].id == "d5"


def test_batch_validation_is_all_or_nothing(store: Store) -> None:
    c = store.create_collection("v")
    good = rand_unit(3, d=8)
    c.add([ItemIn("a", image=good[0])])
    nan = good[1].copy()
    nan[2] = np.nan
    cases = [
        ([ItemIn("b", image=good[1]), ItemIn("c", image=nan)], InputError, "items[1].image"),
        ([ItemIn("b", image=good[1]), ItemIn("b", text=good[2])], InputError, "items[1].id"),
        (
            [ItemIn("b", image=good[1]), ItemIn("c", image=np.zeros(8))],
            InputError,
            "items[1].image",
        ),
        ([ItemIn("b", image=good[1]), ItemIn("c", text=rand_unit(1, d=9)[0])], InputError, None),
        ([ItemIn("b", image=good[1]), ItemIn("c")], InputError, "items[1]"),
        ([ItemIn("b", image=good[1], text=good[2], weight=1.5)], InputError, "items[0].weight"),
        ([ItemIn("b", image=good[1], metadata={"x": float("nan")})], InputError, None),
        ([ItemIn("b", image=good[1], metadata=["not", "a", "dict"])], InputError, None),
        ([ItemIn("", image=good[1])], InputError, "items[0].id"),
        ([ItemIn("b", image=good[1], thumbnail=b"x" * (600 * 1024))], PayloadTooLargeError, None),
        ([ItemIn("b", image=good[1]), ItemIn("a", image=good[2])], ConflictError, None),
        ([], InputError, None),
    ]
    for batch, err, param in cases:
        with pytest.raises(err) as info:
            c.add(batch)
        if param is not None:
            assert info.value.param == param
        assert c.count() == 1, batch
    with pytest.raises(NotFoundError):
        c.get_item("b")
    assert ids_of(c.search(good[1], "image", k=5).hits[0]) == ["a"]


def test_thumbnails_metadata_and_paging(store: Store) -> None:
    c = store.create_collection("t")
    v = rand_unit(3, d=8)
    c.add(
        [
            ItemIn("a", image=v[0], thumbnail=b"\xff\xd8jpeg", metadata={"caption": "été"}),
            ItemIn("b", text=v[1]),
        ]
    )
    assert c.get_thumbnail("a") == b"\xff\xd8jpeg" and c.get_item("a").has_thumbnail
    assert c.get_thumbnail("b") is None
    with pytest.raises(NotFoundError):
        c.get_thumbnail("zz")
    assert c.get_item("a").metadata == {"caption": "été"}
    assert c.list_items(0, 10) == [("a", "image"), ("b", "text")]


# ---------------------------------------------------------------------- corrected vs raw


def test_corrected_search_closes_the_gap_on_real_embeddings(store: Store, pairs) -> None:
    img, txt = pairs
    c = store.create_collection("pairs", index="flat")
    c.add([ItemIn(f"img{n}", image=img[n]) for n in range(250)])
    c.add([ItemIn(f"txt{n}", text=txt[n]) for n in range(125)])
    q = txt[125:]  # captions whose image is in the corpus but whose text is not

    def image_share(corrected: bool) -> float:
        rows = c.search(q, "text", k=10, corrected=corrected).hits
        return float(np.mean([h.modality == "image" for row in rows for h in row]))

    raw_share = image_share(False)
    assert c.correct(q[:2], "text") == pytest.approx(unit(q[:2]))  # no transform: identity
    assert c.fit_transform("centering", wait_seconds=60) is True
    assert c.transform_info()["active"]["method"] == "centering"
    corr_share = image_share(True)
    assert raw_share < 0.05  # the modality gap: text queries find texts
    assert corr_share > raw_share + 0.2
    assert image_share(False) == raw_share  # the raw index is untouched
    # corrected results are exactly brute force over the corrected vectors
    t = c.active_transform
    corpus = np.concatenate([t.transform(unit(img), "image"), t.transform(unit(txt[:125]), "text")])
    names = [f"img{n}" for n in range(250)] + [f"txt{n}" for n in range(125)]
    qc = t.transform(unit(q[:8]), "text")  # the store stores and queries unit vectors
    want = np.argsort(-(qc @ corpus.T), axis=1)[:, :5]
    got = c.search(q[:8], "text", k=5).hits
    assert [ids_of(r) for r in got] == [[names[j] for j in row] for row in want]
    assert np.allclose(c.correct(q[:3], "text"), qc[:3], atol=1e-6)
    # image queries get the image-side map (regression: they once got the text side's)
    qi = t.transform(unit(img[:8]), "image")
    want = np.argsort(-(qi @ corpus.T), axis=1)[:, :5]
    got = c.search(img[:8], "image", k=5).hits
    assert [ids_of(r) for r in got] == [[names[j] for j in row] for row in want]
    assert np.allclose(c.correct(img[:3], "image"), qi[:3], atol=1e-6)
    # metrics: items per modality and a smaller corrected centroid gap
    assert COLLECTION_ITEMS.labels("pairs", "image")._value.get() == 250
    raw_gap = COLLECTION_GAP.labels("pairs", "raw")._value.get()
    assert (
        raw_gap > 0.5 and COLLECTION_GAP.labels("pairs", "corrected")._value.get() < 0.2 * raw_gap
    )
    # back to no transform: corrected == raw
    assert c.set_transform(None) is True
    assert image_share(True) == raw_share


def test_fit_transform_needs_the_right_data(store: Store, pairs) -> None:
    img, txt = pairs
    c = store.create_collection("fit")
    with pytest.raises(InputError):
        c.fit_transform("centering")  # empty
    c.add([ItemIn(f"i{n}", image=img[n]) for n in range(20)])
    c.add([ItemIn(f"t{n}", text=txt[n]) for n in range(20, 40)])
    with pytest.raises(InputError, match="paired"):
        c.fit_transform("procrustes")
    with pytest.raises(InputError, match="paired"):
        c.fit_transform("auto")
    with pytest.raises(InputError):
        c.fit_transform("no-such-method")
    with pytest.raises(InputError):
        c.fit_transform("auto", objective="zeroshot")
    with pytest.raises(InputError, match="query"):
        c.fit_transform("centering", {"query_text_mean": True})
    assert c.active_transform is None
    c.add([ItemIn(f"d{n}", image=img[n], text=txt[n]) for n in range(40, 80)])
    ok = c.fit_transform("auto", {"folds": 2, "methods": "centering"}, objective="retrieval")
    assert ok and c.active_transform.method == "auto"
    info = c.transform_info()
    assert info["status"] == "active" and info["active"]["fit_table"]
    assert c.active_transform.fit_stats_["n_image"] == 40  # auto fits on the 40 documents
    c.fit_transform("mean-shift", {"lam": 1.0})
    assert c.active_transform.fit_stats_["n_image"] == 60  # unpaired: all image vectors
    with pytest.raises(InputError):
        c.set_transform(make_transform("centering").fit(rand_unit(5, 16), rand_unit(5, 16, 1)))


def test_gap_statistics_raw_and_corrected(store: Store, pairs) -> None:
    img, txt = pairs
    c = store.create_collection("gap")
    assert c.gap_statistics()["raw"] is None
    c.add([ItemIn(f"d{n}", image=img[n], text=txt[n]) for n in range(100)])
    stats = c.gap_statistics()
    assert stats["paired"] and stats["raw"] == stats["corrected"]
    c.fit_transform("centering")
    stats = c.gap_statistics()
    assert stats["raw"]["centroid_gap"] == pytest.approx(stats["centroid_gap"]["raw"], abs=1e-4)
    small = c.gap_statistics(max_rows=30)  # sampled, still paired rows
    assert small["sampled"] and small["rows"] == {"image": 30, "text": 30} and small["paired"]
    c.add([ItemIn("lone", text=txt[150])])
    mixed = c.gap_statistics()
    assert not mixed["paired"] and mixed["rows"] == {"image": 100, "text": 101}
    g_raw, g_corr = stats["centroid_gap"]["raw"], stats["centroid_gap"]["corrected"]
    assert g_raw == pytest.approx(np.linalg.norm(img[:100].mean(0) - txt[:100].mean(0)), abs=1e-4)
    assert g_corr < 0.2 * g_raw and stats["corrected"] != stats["raw"]


# ---------------------------------------------------------------------- persistence and repair


def _fill(c, img, txt) -> None:
    c.add([ItemIn(f"i{n}", image=img[n], metadata={"n": n}) for n in range(80)])
    c.add([ItemIn(f"t{n}", text=txt[n]) for n in range(80)])
    c.add([ItemIn(f"d{n}", image=img[n], text=txt[n]) for n in range(80, 100)])


@pytest.mark.parametrize("kind", KINDS)
def test_restart_restores_everything(tmp_path: Path, pairs, kind: str) -> None:
    img, txt = pairs
    q = txt[150:160]
    with Store(tmp_path, flush_interval=None) as s:
        c = s.create_collection(
            "p", index=kind, index_params={"train_size": 100} if kind == "ivfpq" else None
        )
        _fill(c, img, txt)
        c.fit_transform("centering")
        c.delete_items(["i3", "t4"])
        before = [c.search(q, "text", k=5, corrected=b).hits for b in (True, False)]
        info = c.info()
    with Store(tmp_path, flush_interval=None) as s:
        c = s.get("p")
        assert c.repair_report == {"raw": "loaded", "corrected": "loaded"}
        assert c.info() == info and c.active_transform.method == "centering"
        assert [c.search(q, "text", k=5, corrected=b).hits for b in (True, False)] == before
        assert c.get_item("i7").metadata == {"n": 7}


def test_damaged_or_stale_index_files_are_repaired_at_open(tmp_path: Path, pairs) -> None:
    img, txt = pairs
    q = img[200:210]
    with Store(tmp_path, flush_interval=None) as s:
        c = s.create_collection("r", index="flat")  # exact: results must match bit for bit
        _fill(c, img, txt)
        c.fit_transform("centering")
        want = [c.search(q, "image", k=5, corrected=b).hits for b in (True, False)]
    idx_dir = tmp_path / "collections" / "r" / "indexes"
    raw_file = next(idx_dir.glob("raw-*.faiss"))
    data = bytearray(raw_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: fails the checksum
    raw_file.write_bytes(bytes(data))
    next(idx_dir.glob("corrected-*.faiss")).unlink()
    with Store(tmp_path, flush_interval=None) as s:
        c = s.get("r")
        assert c.repair_report["raw"].startswith("rebuilt")
        assert c.repair_report["corrected"].startswith("rebuilt")
        assert [c.search(q, "image", k=5, corrected=b).hits for b in (True, False)] == want
        # writes that never reached the index files (a crash before the flush)
        c.add([ItemIn("late", image=img[220])])
        c.delete_item("i5")
        c.close(flush=False)
    (idx_dir / "raw.json").write_text("{not json")
    with Store(tmp_path, flush_interval=None) as s:
        c = s.get("r")
        assert c.repair_report["raw"].startswith("rebuilt")
        assert c.repair_report["corrected"] == "repaired: +1 -1"
        assert c.search(img[220], "image", k=1).hits[0][0].id == "late"
        assert "i5" not in ids_of(c.search(img[5], "image", k=5).hits[0])


def test_hnsw_tombstones_are_compacted(store: Store, monkeypatch) -> None:
    c = store.create_collection("h", index="hnsw")
    monkeypatch.setattr(c, "compact_min_tombstones", 20)
    v = rand_unit(100, seed=7)
    c.add([ItemIn(f"i{n}", image=v[n]) for n in range(100)])
    c.delete_items([f"i{n}" for n in range(10)])
    assert len(c._raw.deleted) == 10 and c._raw.ntotal == 100
    assert all(not h.id.startswith("i0") for h in c.search(v[0], "image", k=5).hits[0])
    with_selector = c.search(v[:10], "image", k=5).hits
    c._raw.use_selectors = False  # over-fetch + filter (the GPU path) skips tombstones too
    over_fetched = c.search(v[:10], "image", k=5).hits
    assert [ids_of(r) for r in over_fetched] == [ids_of(r) for r in with_selector]
    # the same hits; scores to float32 rounding (an exact search answers a small collection)
    scores = [h.score for r in over_fetched for h in r]
    assert scores == pytest.approx([h.score for r in with_selector for h in r], abs=1e-6)
    c._raw.use_selectors = True
    c.delete_items([f"i{n}" for n in range(10, 30)])  # 30% tombstones: compaction job
    assert c.wait_transform(30)
    assert c._raw.ntotal == 70 and not c._raw.deleted
    assert c.search(v[50], "image", k=1).hits[0][0].id == "i50"


def test_index_build_failure_keeps_the_old_transform(store: Store, pairs, monkeypatch) -> None:
    img, txt = pairs
    c = store.create_collection("fail")
    _fill(c, img, txt)
    assert c.fit_transform("centering")
    fp = c.transform_info()["fingerprint"]

    def boom(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(VectorIndex, "build", boom)
    assert c.fit_transform("standardize", wait_seconds=30) is False
    st = c.transform_status
    assert st["status"] == "failed" and "simulated" in st["error"]
    assert c.active_transform.method == "centering" and c.transform_info()["fingerprint"] == fp
    files = os.listdir(c.path / "transforms")
    assert files == [f"{fp}.safetensors"]  # the failed artifact is cleaned up


def test_deleting_a_busy_collection_leaves_the_others_reachable(store: Store) -> None:
    import threading

    busy, other = store.create_collection("busy"), store.create_collection("other")
    closing, release = threading.Event(), threading.Event()
    close = busy.close

    def slow_close(*args, **kwargs):  # a background fit still finishing
        closing.set()
        release.wait(30)
        close(*args, **kwargs)

    busy.close = slow_close
    deleter = threading.Thread(target=store.delete_collection, args=("busy",))
    deleter.start()
    try:
        assert closing.wait(30)
        assert store.get("other") is other  # not stuck behind the store lock
        with pytest.raises(NotFoundError):
            store.get("busy")
        with pytest.raises(ConflictError, match="still being deleted"):
            store.create_collection("busy")
    finally:
        release.set()
        deleter.join(30)
    assert not deleter.is_alive()
    store.create_collection("busy")  # the name is free once the folder is gone


def test_a_superseded_transform_request_is_told_so(store: Store, pairs, monkeypatch) -> None:
    import threading

    from gapfix.transforms.methods import Whiten

    img, txt = pairs
    c = store.create_collection("sup")
    _fill(c, img, txt)
    fitting, release = threading.Event(), threading.Event()
    fit = Whiten.fit

    def slow_fit(self, *args, **kwargs):  # a long fit, still running when B arrives
        fitting.set()
        release.wait(30)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Whiten, "fit", slow_fit)
    outcome: dict[str, object] = {}

    def request_a() -> None:
        try:
            outcome["a"] = c.fit_transform("whiten", wait_seconds=60)
        except ConflictError as exc:
            outcome["a"] = exc

    a = threading.Thread(target=request_a)
    a.start()
    try:
        assert fitting.wait(30)
        assert c.fit_transform("centering", wait_seconds=60) is True  # request B
        a.join(30)
        assert isinstance(outcome["a"], ConflictError), outcome
        assert "superseded" in str(outcome["a"])
        assert c.active_transform.method == "centering"
    finally:
        release.set()
        a.join(30)


def test_hnsw_upserts_are_compacted_too(store: Store, monkeypatch) -> None:
    c = store.create_collection("u", index="hnsw")
    monkeypatch.setattr(c, "compact_min_tombstones", 20)
    for seed in range(3):  # re-ingest the same ids: every round tombstones the last one
        v = rand_unit(60, seed=seed)
        c.add([ItemIn(f"i{n}", image=v[n]) for n in range(60)], upsert=True)
        assert c.wait_transform(30)
    assert c.count() == 60
    assert c._raw.ntotal < 3 * 60 and c._raw.tombstone_ratio < c.compact_ratio
    assert c.search(v[7], "image", k=1).hits[0][0].id == "i7"


def test_numpy_scalars_are_numbers_too(store: Store) -> None:
    c = store.create_collection("np")
    v = rand_unit(10, seed=9)
    c.add([ItemIn(f"d{n}", image=v[n], text=v[9 - n], weight=np.float32(0.25)) for n in range(5)])
    assert c.list_items(np.int64(0), np.int64(2)) == [("d0", "document"), ("d1", "document")]
    assert len(c.search(v[:1], "image", k=np.int64(3)).hits[0]) == 3
    for offset, limit in ((0, 2.5), (True, 2), (-1, 2)):
        with pytest.raises(InputError, match="offset must be an integer"):
            c.list_items(offset, limit)
    with pytest.raises(InputError, match="weight"):
        c.add([ItemIn("x", image=v[0], text=v[1], weight=np.bool_(True))])
