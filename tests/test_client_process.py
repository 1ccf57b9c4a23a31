"""Acceptance of ``gapfix.client`` and the LangChain / LlamaIndex adapters against a live
``gapfix serve --model gapfix-tiny --pretrained none`` with small request limits (so every
long list is split into several requests) and a local image server on its URL allow-list.

Raw vectors are compared with ``/v1/embed`` one input at a time; corrected ones with the
``gapfix apply`` CLI run on those raw vectors (within 1e-5). The README's client and adapter
snippets run here too."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gapfix.client import AsyncClient, Client, GapfixClientError
from tests.conftest import make_gapped
from tests.test_integrations_process import BIN, DIM, TINY, apply_cli, run_python, snippet
from tests.test_service_fetching import BLUE, RED, ImageServer, png
from tests.test_service_process import KEY, Server

pytestmark = pytest.mark.slow

LIMITS = {"GAPFIX_MAX_TEXTS_PER_REQUEST": "8", "GAPFIX_MAX_IMAGES_PER_REQUEST": "3",
          "GAPFIX_MAX_QUERIES_PER_REQUEST": "5"}  # fmt: skip
TEXTS = [f"photo number {i} of a {c}" for i, c in enumerate(["dog", "cat", "car"] * 7)]  # 21
GREEN = png((0, 160, 40), (50, 50))


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def other() -> Iterator[ImageServer]:
    """A loopback server that is not on the allow-list."""
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibration data and an artifact with a query-text mean (so role matters)."""
    cwd = tmp_path_factory.mktemp("client")
    img, txt = make_gapped(120, DIM, seed=7)
    q = make_gapped(60, DIM, seed=8)[1] * 0.9 + 0.1 * np.eye(DIM, dtype=np.float32)[1]
    np.savez(cwd / "calib.npz", image=img, text=txt, query=q / np.linalg.norm(q, axis=1)[:, None])
    subprocess.run(
        [str(BIN / "gapfix"), "fit", "--image", "calib.npz:image", "--text", "calib.npz:text",
         "--method", "centering", "--param", "query_text_mean=true", "--query-text",
         "calib.npz:query", "--out", "coco.gapfix"],
        cwd=cwd, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (cwd / "photo.jpg").write_bytes(_jpeg("orange"))
    (cwd / "blue.png").write_bytes(BLUE)
    return cwd


def _jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(work: Path, images: ImageServer) -> Iterator[Server]:
    env = {**LIMITS, "GAPFIX_URL_ALLOW": f"127.0.0.1:{images.port}"}
    srv = Server(work / "data", work / "serve.log", extra_env=env, model_args=TINY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def client(server: Server, work: Path) -> Iterator[Client]:
    with Client(server.url, api_key=KEY) as c:
        c.transforms.put("coco", work / "coco.gapfix")
        yield c


def raw_one(server: Server, texts: list[str] = (), images: list[bytes] = ()) -> np.ndarray:
    """``/v1/embed`` of each input alone (the reference)."""
    rows = [server.client.post("/v1/embed", json={"texts": [t]}).json()["texts"][0] for t in texts]
    rows += [server.client.post("/v1/embed", json={"images": [base64.b64encode(b).decode()]})
             .json()["images"][0] for b in images]  # fmt: skip
    return np.asarray(rows, np.float32)


def image_inputs(work: Path, images: ImageServer) -> tuple[list, list[bytes]]:
    """Seven images in every form the client takes, and the bytes each stands for."""
    given = [RED, work / "blue.png", f"{images.url}/red.png", Image.open(io.BytesIO(GREEN)),
             f"{images.url}/hops/2", "data:image/png;base64," + base64.b64encode(BLUE).decode(),
             str(work / "photo.jpg")]  # fmt: skip
    pil = io.BytesIO()
    Image.open(io.BytesIO(GREEN)).save(pil, format="PNG")  # what the client sends for a PIL image
    want = [RED, BLUE, RED, pil.getvalue(), RED, BLUE, (work / "photo.jpg").read_bytes()]
    return given, want


def test_client_vectors_equal_embed_and_apply(client: Client, server: Server, work: Path,
                                              images: ImageServer, capsys) -> None:  # fmt: skip
    given, blobs = image_inputs(work, images)
    raw_t, raw_i = raw_one(server, TEXTS), raw_one(server, images=blobs)
    e = client.embed(TEXTS, given)  # 21 texts / 8 and 7 images / 3: several requests
    assert e.texts.shape == (21, DIM) and e.images.shape == (7, DIM) and not e.corrected
    assert np.allclose(e.texts, raw_t, atol=1e-6) and np.allclose(e.images, raw_i, atol=1e-6)

    want_t = apply_cli(work, "coco.gapfix", raw_t, "text")
    want_q = apply_cli(work, "coco.gapfix", raw_t, "text", role="query")
    want_i = apply_cli(work, "coco.gapfix", raw_i, "image")
    assert not np.allclose(want_t, want_q, atol=1e-3)  # the query mean makes a difference
    c = client.embed(TEXTS, given, transform="coco", progress=True)
    assert c.transform_name == "coco" and c.fingerprint == client.transforms.get("coco")[
        "fingerprint"]  # fmt: skip
    assert np.allclose(c.texts, want_t, atol=1e-5) and np.allclose(c.images, want_i, atol=1e-5)
    bar = capsys.readouterr().err
    assert "embed:" in bar and "/28 [" in bar  # the bar, asked for: 21 texts + 7 images
    q = client.embed_texts(TEXTS, transform="coco", role="query")
    assert np.allclose(q, want_q, atol=1e-5)
    assert np.allclose(client.correct(raw_t, "text", transform="coco"), want_t, atol=1e-5)
    assert np.allclose(client.correct(raw_i, "image", transform="coco"), want_i, atol=1e-5)
    client.embed(TEXTS[:3])
    assert capsys.readouterr().err == ""  # no bar by default

    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(server.url, api_key=KEY) as a:
            out = await a.embed(TEXTS, given, transform="coco")
            return out.images, await a.correct(raw_t, "text", transform="coco", role="query")

    ai, aq = asyncio.run(run())
    assert np.allclose(ai, want_i, atol=1e-5) and np.allclose(aq, want_q, atol=1e-5)


def test_client_errors_name_the_callers_input(client: Client, images: ImageServer,
                                              other: ImageServer) -> None:  # fmt: skip
    urls = [f"{images.url}/red.png"] * 4 + [f"{images.url}/to/{other.port}/red.png"]
    with pytest.raises(GapfixClientError) as info:
        client.embed(images=urls)  # the bad one is the 2nd of the 2nd request
    e = info.value
    assert (e.status, e.type, e.param) == (400, "url_refused", "images[4]"), e
    assert e.message.startswith("images[4]: ")
    with pytest.raises(GapfixClientError) as info:
        client.embed(TEXTS, transform="nope")
    assert (info.value.status, info.value.type, info.value.param) == (404, "not_found",
                                                                      "transform")  # fmt: skip
    with pytest.raises(GapfixClientError) as info:
        client.embed(images=[f"{images.url}/page.html"])
    assert info.value.status == 400 and info.value.param == "images[0]"


def test_client_items_search_and_transforms(client: Client, server: Server, work: Path,
                                            images: ImageServer) -> None:  # fmt: skip
    assert server.client.post("/v1/collections", json={"name": "pics"}).status_code == 201
    img, txt = make_gapped(12, DIM, seed=3)
    items = [{"id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)]
    items += [{"id": f"v{i}", "vector": v, "modality": "image"} for i, v in enumerate(img)]
    items += [{"id": "u0", "image": f"{images.url}/red.png", "metadata": {"src": "url"}},
              {"id": "p0", "image": work / "photo.jpg", "text": "an orange photo"}]  # fmt: skip
    done = client.add_items("pics", items)
    assert done["added"] == len(items) == 35 and done["ids"] == [it["id"] for it in items]
    stored = server.client.get("/v1/collections/pics/items/u0?vectors=true").json()
    assert np.allclose(stored["vectors"]["image"], raw_one(server, images=[RED])[0], atol=1e-6)
    bad = [{"id": f"x{i}", "text": "fine"} for i in range(9)]
    bad.append({"id": "x9", "image": f"{images.url}/missing.png"})
    with pytest.raises(GapfixClientError) as info:
        client.add_items("pics", bad)  # 9 texts: a request of 8, then the bad one's
    e = info.value
    assert e.param == "items[9].image_url" and "8 items of earlier requests were written" in (
        e.message)  # fmt: skip

    # 12 vector queries with a limit of 5 per request = the same searches one by one
    hits = client.search("pics", queries=txt, modality="text", k=4, corrected=False)
    assert len(hits) == 12
    for q, got in zip(txt, hits, strict=True):
        one = server.client.post(
            "/v1/collections/pics/search",
            json={"query": {"vector": q.tolist(), "modality": "text"}, "k": 4, "corrected": False},
        )
        assert [h["id"] for h in got] == [h["id"] for h in one.json()["results"]]  # fmt: skip
    assert client.search("pics", {"id": "v3"}, k=1, modalities=["image"])[0]["id"].startswith("v")
    assert client.search("pics", "a dog", k=2)[0]["modality"] in ("text", "image", "document")

    # named transforms: put (same bytes again is fine), fit, list, get, delete
    art = (work / "coco.gapfix").read_bytes()
    assert client.transforms.put("coco", art)["name"] == "coco"
    cal = np.load(work / "calib.npz")
    fitted = client.transforms.fit("fit1", "centering", cal["image"], cal["text"])
    assert fitted["status"] == "ready" and fitted["dim"] == DIM
    assert {t["name"] for t in client.transforms.list()} >= {"coco", "fit1"}
    vec = client.correct(cal["text"][:3], "text", transform="fit1")
    assert np.allclose(vec, apply_cli(work, "coco.gapfix", cal["text"][:3], "text"), atol=1e-5)
    assert client.transforms.delete("fit1") == {"deleted": "fit1"}
    with pytest.raises(GapfixClientError) as info:
        client.transforms.get("fit1")
    assert info.value.status == 404


def test_adapters_equal_apply(client: Client, server: Server, work: Path,
                              images: ImageServer) -> None:  # fmt: skip
    from gapfix.integrations.langchain import GapfixEmbeddings
    from gapfix.integrations.llama_index import GapfixEmbedding

    raw_t = raw_one(server, TEXTS)
    raw_i = raw_one(server, images=[RED, (work / "photo.jpg").read_bytes()])
    want_t = apply_cli(work, "coco.gapfix", raw_t, "text")
    want_q = apply_cli(work, "coco.gapfix", raw_t[:1], "text", role="query")[0]
    want_i = apply_cli(work, "coco.gapfix", raw_i, "image")
    uris = [f"{images.url}/red.png", str(work / "photo.jpg")]

    lc = GapfixEmbeddings(server.url, KEY, transform="coco")
    assert np.allclose(lc.embed_documents(TEXTS), want_t, atol=1e-5)
    assert np.allclose(lc.embed_query(TEXTS[0]), want_q, atol=1e-5)
    assert np.allclose(lc.embed_image(uris), want_i, atol=1e-5)
    assert np.allclose(asyncio.run(lc.aembed_documents(TEXTS)), want_t, atol=1e-5)
    assert np.allclose(asyncio.run(lc.aembed_query(TEXTS[0])), want_q, atol=1e-5)
    assert np.allclose(asyncio.run(lc.aembed_image(uris)), want_i, atol=1e-5)
    plain = GapfixEmbeddings(server.url, KEY)
    assert np.allclose(plain.embed_documents(TEXTS), raw_t, atol=1e-6)
    assert np.allclose(plain.embed_query(TEXTS[0]), raw_t[0], atol=1e-6)

    li = GapfixEmbedding(base_url=server.url, api_key=KEY, transform="coco")
    assert np.allclose(li.get_text_embedding_batch(TEXTS), want_t, atol=1e-5)
    assert np.allclose(li.get_query_embedding(TEXTS[0]), want_q, atol=1e-5)
    assert np.allclose(li.get_image_embedding_batch(uris), want_i, atol=1e-5)
    photo = io.BytesIO((work / "photo.jpg").read_bytes())  # LlamaIndex's in-memory images
    assert np.allclose(li.get_image_embedding(photo), want_i[1], atol=1e-5)
    assert np.allclose(asyncio.run(li.aget_query_embedding(TEXTS[0])), want_q, atol=1e-5)
    assert np.allclose(asyncio.run(li.aget_text_embedding_batch(TEXTS)), want_t, atol=1e-5)
    assert np.allclose(asyncio.run(li.aget_image_embedding(uris[0])), want_i[0], atol=1e-5)
    raw_li = GapfixEmbedding(base_url=server.url, api_key=KEY)
    assert np.allclose(raw_li.get_text_embedding(TEXTS[1]), raw_t[1], atol=1e-6)


def test_readme_client_and_adapter_snippets(client: Client, server: Server, work: Path) -> None:
    os.environ["GAPFIX_URL"], os.environ["GAPFIX_KEY"] = server.url, KEY
    try:
        raw = raw_one(server, ["a dog on a beach", "two cats on a sofa", "a dog"])
        photo = raw_one(server, images=[(work / "photo.jpg").read_bytes()])
        want = apply_cli(work, "coco.gapfix", raw[:2], "text")
        want_q = apply_cli(work, "coco.gapfix", raw[2:], "text", role="query")[0]
        want_img = apply_cli(work, "coco.gapfix", photo, "image")
        r = server.client.post("/v1/collections", json={"name": "photos"})
        assert r.status_code == 201, r.text
        ns = run_python(snippet("client"), work)
        assert np.allclose(ns["docs"], want, atol=1e-5)
        assert np.allclose(ns["query"], want_q, atol=1e-5)
        assert np.allclose(ns["images"], want_img, atol=1e-5)
        assert np.allclose(ns["raw"], raw[:1], atol=1e-6)
        assert np.allclose(ns["fixed"], want[:1], atol=1e-5)
        assert {h["id"] for h in ns["hits"]} == {"img-1", "cap-1"}
        assert server.client.get("/v1/collections/photos").json()["count"] == 2
        ns = run_python(snippet("langchain-adapter"), work)
        assert np.allclose(ns["docs"], want, atol=1e-5)
        assert np.allclose(ns["query"], want_q, atol=1e-5)
        assert np.allclose(ns["image"], want_img, atol=1e-5)
        assert ns["store"].similarity_search("two cats", k=2)  # the store holds both texts
        ns = run_python(snippet("llama-index"), work)
        assert np.allclose(ns["query"], want_q, atol=1e-5)
        assert np.allclose(ns["image"], want_img[0], atol=1e-5)
        assert len(ns["index"].as_retriever(similarity_top_k=2).retrieve("a dog")) == 2
    finally:
        os.environ.pop("GAPFIX_URL", None)
        os.environ.pop("GAPFIX_KEY", None)
