"""Acceptance: a live ``gapfix serve --model gapfix-tiny --pretrained none`` on loopback, driven
by the real ``openai`` SDK, LangChain's own ``OpenAIEmbeddings``, ``huggingface_hub``'s TEI
client, curl, and what Weaviate sends; every README integration snippet is run here.

Corrected vectors are compared with the ``gapfix apply`` CLI run on ``/v1/embed``'s raw
vectors (within 1e-5); raw ones with ``/v1/embed``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_gapped
from tests.test_service_fetching import RED, ImageServer
from tests.test_service_process import AUTH, KEY, Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ("--model", "gapfix-tiny", "--pretrained", "none")
DIM = 32


def snippet(name: str) -> str:
    """The fenced code block after ``<!-- snippet: NAME -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"README has no snippet {name!r}"
    return m.group(1)


def bash(code: str, cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def run_python(code: str, cwd: Path, ns: dict | None = None) -> dict:
    """Execute a README python snippet in ``cwd``; returns its namespace."""
    ns = dict(ns or {})
    old = Path.cwd()
    os.chdir(cwd)
    try:
        exec(compile(code, "README.md", "exec"), ns)
    finally:
        os.chdir(old)
    return ns


def apply_cli(cwd: Path, artifact: str, x: np.ndarray, modality: str, role: str = "corpus"):
    """``gapfix apply`` of ``artifact`` on ``x`` (the CLI, as a user runs it)."""
    np.save(cwd / "in.npy", x)
    subprocess.run(
        [str(BIN / "gapfix"), "apply", "--transform", artifact, "--modality", modality,
         "--role", role, "--input", "in.npy", "--output", "out.npy"],
        cwd=cwd, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return np.load(cwd / "out.npy")


def vecs(resp) -> np.ndarray:
    """The SDK's embeddings; a base64 string (asked for explicitly) decoded as OpenAI's."""
    rows = [d.embedding for d in resp.data]
    return np.asarray([np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else e
                       for e in rows], np.float32)  # fmt: skip


def jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("integrations")
    img, txt = make_gapped(120, DIM, seed=4)
    np.savez(cwd / "calib.npz", image=img, text=txt)
    (cwd / "photo.jpg").write_bytes(jpeg("orange"))
    return cwd


def env_for(server: Server, cwd: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "G": server.url,
        "AUTH": f"Authorization: Bearer {KEY}",
        "D": str(cwd / "calib.npz"),
    }


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    """A local image server, on the live server's URL allow-list."""
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def other() -> Iterator[ImageServer]:
    """A loopback image server that is not on the allow-list."""
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(work: Path, images: ImageServer) -> Iterator[Server]:
    srv = Server(work / "data", work / "serve.log", model_args=TINY,
                 extra_env={"GAPFIX_URL_ALLOW": f"127.0.0.1:{images.port}"})  # fmt: skip
    try:
        srv.wait_ready()
        os.environ["GAPFIX_URL"], os.environ["GAPFIX_KEY"] = srv.url, KEY
        yield srv
    finally:
        os.environ.pop("GAPFIX_URL", None)
        os.environ.pop("GAPFIX_KEY", None)
        srv.kill()


def test_readme_register_then_openai_sdk_and_langchain(server: Server, work: Path) -> None:
    from openai import OpenAI

    env = env_for(server, work)
    out = bash(snippet("register"), work, env)
    assert '"name":"coco"' in out.replace(" ", "") and (work / "coco.gapfix").exists()
    c = server.client
    texts = ["a dog on a beach", "two cats on a sofa"]
    raw = np.asarray(c.post("/v1/embed", json={"texts": texts}).json()["texts"], np.float32)
    photo = (work / "photo.jpg").read_bytes()
    raw_img = np.asarray(c.post("/v1/embed", json={"images": [base64.b64encode(photo).decode()]})
                         .json()["images"], np.float32)  # fmt: skip
    want = apply_cli(work, "coco.gapfix", raw, "text")
    want_q = apply_cli(work, "coco.gapfix", raw[:1], "text", role="query")
    want_img = apply_cli(work, "coco.gapfix", raw_img, "image")

    ns = run_python(snippet("openai"), work)
    assert np.allclose([d.embedding for d in ns["raw"].data], raw, atol=1e-6)
    assert np.allclose([d.embedding for d in ns["fixed"].data], want, atol=1e-5)
    dog = np.asarray(c.post("/v1/embed", json={"texts": ["a dog"]}).json()["texts"], np.float32)
    want_dog = apply_cli(work, "coco.gapfix", dog, "text", role="query")
    assert np.allclose(ns["query"].data[0].embedding, want_dog[0], atol=1e-5)
    assert np.allclose(ns["image"].data[0].embedding, want_img[0], atol=1e-5)
    assert ns["raw"].model == ns["model"] == "gapfix-tiny/none"

    # the SDK directly: float and base64, raw and corrected, text and image
    sdk = OpenAI(base_url=server.url + "/v1", api_key=KEY)
    uri = "data:image/jpeg;base64," + base64.b64encode(photo).decode()
    for fmt in ("float", "base64"):
        r = sdk.embeddings.create(model=ns["model"], input=texts, encoding_format=fmt)
        assert np.allclose(vecs(r), raw, atol=1e-6)
        r = sdk.embeddings.create(model=ns["model"], input=texts, encoding_format=fmt,
                                  extra_body={"transform": "coco"})  # fmt: skip
        assert np.allclose(vecs(r), want, atol=1e-5)
        r = sdk.embeddings.create(model=ns["model"], input=texts[0], encoding_format=fmt,
                                  extra_body={"transform": "coco", "role": "query"})  # fmt: skip
        assert np.allclose(vecs(r)[0], want_q[0], atol=1e-5)
        r = sdk.embeddings.create(model=ns["model"], input=[uri], encoding_format=fmt,
                                  extra_body={"modality": "image"})  # fmt: skip
        assert np.allclose(vecs(r)[0], raw_img[0], atol=1e-6)
        r = sdk.embeddings.create(model=ns["model"], input=[uri], encoding_format=fmt,
                                  extra_body={"modality": "image", "transform": "coco"})  # fmt: skip
        assert np.allclose(vecs(r)[0], want_img[0], atol=1e-5)
    assert sdk.models.retrieve(ns["model"]).id == ns["model"]

    # LangChain's own OpenAIEmbeddings gets the same vectors
    lc = run_python(snippet("langchain"), work, {"model": ns["model"]})
    assert np.allclose(lc["docs"], want, atol=1e-5)
    from langchain_openai import OpenAIEmbeddings

    plain = OpenAIEmbeddings(model=ns["model"], base_url=server.url + "/v1", api_key=KEY,
                             check_embedding_ctx_length=False)  # fmt: skip
    assert np.allclose(plain.embed_documents(texts), raw, atol=1e-6)
    assert np.allclose(plain.embed_query(texts[0]), raw[0], atol=1e-6)


def test_sdk_errors(server: Server, work: Path) -> None:
    import openai

    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    model = "gapfix-tiny/none"
    wide = make_gapped(40, 64)
    np.savez(work / "wide.npz", image=wide[0], text=wide[1])
    subprocess.run([str(BIN / "gapfix"), "fit", "--image", "wide.npz:image", "--text",
                    "wide.npz:text", "--method", "centering", "--out", "wide.gapfix"],
                   cwd=work, check=True, capture_output=True, timeout=120)  # fmt: skip
    r = server.client.put("/v1/transforms/wide", content=(work / "wide.gapfix").read_bytes(),
                          headers={**AUTH, "Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 201
    listing = sorted(str(p) for p in (work / "data").rglob("*") if ".tmp-" not in p.name)
    cases = [
        (dict(model="nope", input="x"), openai.NotFoundError, "model_not_found"),
        (dict(model=model, input="x", extra_body={"transform": "nope"}), openai.NotFoundError,
         None),
        (dict(model=model, input="x", dimensions=64), openai.BadRequestError, None),
        (dict(model=model, input="x", extra_body={"transform": "wide"}), openai.ConflictError,
         "dimension_mismatch"),
        (dict(model=model, input=[]), openai.BadRequestError, None),
        (dict(model=model, input=[f"t{i}" for i in range(300)]), openai.APIStatusError,
         "payload_too_large"),
    ]  # fmt: skip
    for kwargs, error, code in cases:
        with pytest.raises(error) as info:
            sdk.embeddings.create(**kwargs)
        assert info.value.status_code < 500
        if code:
            assert info.value.code == code, info.value.body
    assert info.value.status_code == 413
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")
    after = sorted(str(p) for p in (work / "data").rglob("*") if ".tmp-" not in p.name)
    assert after == listing  # nothing written by the refused calls


def test_sdk_images_by_loopback_url(
    server: Server, work: Path, images: ImageServer, other: ImageServer
) -> None:
    """``modality: image`` inputs given as URLs of an allow-listed loopback server: raw and
    corrected, float and base64, mixed with data URIs; a redirect to a loopback port not on
    the allow-list and a non-image URL are 400s in OpenAI's shape and write nothing."""
    import openai

    if server.client.get("/v1/transforms/coco").status_code == 404:
        bash(snippet("register"), work, env_for(server, work))
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    model = "gapfix-tiny/none"
    photo = (work / "photo.jpg").read_bytes()
    inline = [base64.b64encode(b).decode() for b in (RED, photo)]
    raw = np.asarray(server.client.post("/v1/embed", json={"images": inline}).json()["images"],
                     np.float32)  # fmt: skip
    want = apply_cli(work, "coco.gapfix", raw, "image")
    inputs = [f"{images.url}/red.png", "data:image/jpeg;base64," + inline[1],
              f"{images.url}/hops/2"]  # fmt: skip
    for fmt in ("float", "base64"):
        r = sdk.embeddings.create(model=model, input=inputs, encoding_format=fmt,
                                  extra_body={"modality": "image"})  # fmt: skip
        assert np.allclose(vecs(r), raw[[0, 1, 0]], atol=1e-6)
        r = sdk.embeddings.create(model=model, input=inputs, encoding_format=fmt,
                                  extra_body={"modality": "image", "transform": "coco"})  # fmt: skip
        assert np.allclose(vecs(r), want[[0, 1, 0]], atol=1e-5)
        assert r.usage.prompt_tokens == 0
    listing = sorted(str(p) for p in (work / "data").rglob("*") if ".tmp-" not in p.name)
    seen = len(other.requests)
    bad = [([inputs[0], f"{images.url}/to/{other.port}/red.png"], "input[1]", "url_refused"),
           ([f"{images.url}/page.html"], "input[0]", None),
           ([f"{images.url}/missing.png"], "input[0]", "fetch_failed")]  # fmt: skip
    for urls, param, code in bad:
        with pytest.raises(openai.BadRequestError) as info:
            sdk.embeddings.create(model=model, input=urls, extra_body={"modality": "image"})
        err = info.value.body
        assert set(err) == {"message", "type", "param", "code"}, err
        assert err["param"] == param and err["type"] == "invalid_request_error", err
        assert err["message"].startswith(f"{param}: ")
        if code:
            assert err["code"] == code, err
    assert len(other.requests) == seen  # the redirect target was never contacted
    after = sorted(str(p) for p in (work / "data").rglob("*") if ".tmp-" not in p.name)
    assert after == listing


def test_readme_tei(server: Server, work: Path) -> None:
    env = env_for(server, work)
    out = bash(snippet("tei"), work, env)
    raw = np.asarray(server.client.post("/v1/embed", json={
        "texts": ["a dog on a beach", "two cats"]}).json()["texts"])  # fmt: skip
    decoder = json.JSONDecoder()
    info, end = decoder.raw_decode(out)  # the two curl bodies, back to back
    vectors, _ = decoder.raw_decode(out[end:].lstrip())
    assert info["model_id"] == "gapfix-tiny/none"
    assert np.allclose(vectors, raw, atol=1e-6)
    ns = run_python(snippet("tei-hub"), work)
    assert np.asarray(ns["vectors"]).shape == (2, DIM)
    assert np.allclose(ns["vectors"], raw, atol=1e-6)


def test_readme_weaviate_with_default_transform(server: Server, work: Path) -> None:
    """Restart with GAPFIX_DEFAULT_TRANSFORM=coco (registered before the restart)."""
    import yaml

    compose = yaml.safe_load(snippet("weaviate-compose"))["services"]
    assert compose["weaviate"]["environment"]["CLIP_INFERENCE_API"] == "http://gapfix:8000"
    assert compose["gapfix"]["environment"]["GAPFIX_DEFAULT_TRANSFORM"] == "coco"
    if server.client.get("/v1/transforms/coco").status_code == 404:
        bash(snippet("register"), work, env_for(server, work))
    server.kill()
    srv = Server(work / "data", work / "serve2.log", model_args=TINY,
                 extra_env={"GAPFIX_DEFAULT_TRANSFORM": "coco"})  # fmt: skip
    try:
        srv.wait_ready()
        os.environ["GAPFIX_URL"] = srv.url
        c = srv.client
        photo = base64.b64encode((work / "photo.jpg").read_bytes()).decode()
        raw = c.post("/v1/embed", json={"texts": ["a dog on a beach"], "images": [photo]}).json()
        ns = run_python(snippet("weaviate"), work)
        want_t = apply_cli(work, "coco.gapfix", np.asarray(raw["texts"], np.float32), "text")
        want_i = apply_cli(work, "coco.gapfix", np.asarray(raw["images"], np.float32), "image")
        assert np.allclose(ns["text_vector"], want_t[0], atol=1e-5)
        assert np.allclose(ns["image_vector"], want_i[0], atol=1e-5)
        assert c.get("/meta").json()["transform"]["name"] == "coco"
        assert httpx.get(f"{srv.url}/.well-known/live").status_code == 204
        # the default applies to /v1/embeddings without a transform, and to TEI /embed
        from openai import OpenAI

        sdk = OpenAI(base_url=srv.url + "/v1", api_key=KEY)
        r = sdk.embeddings.create(model="gapfix-tiny/none", input="a dog on a beach")
        assert np.allclose(r.data[0].embedding, want_t[0], atol=1e-5)
        r = sdk.embeddings.create(model="gapfix-tiny/none", input="a dog on a beach",
                                  extra_body={"transform": None})  # fmt: skip
        assert np.allclose(r.data[0].embedding, raw["texts"][0], atol=1e-6)
        tei = c.post("/embed", json={"inputs": "a dog on a beach"}).json()
        assert np.allclose(tei[0], want_t[0], atol=1e-5)
    finally:
        srv.kill()
