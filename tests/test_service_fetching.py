"""Image URLs fetched by the service: the SSRF guard (address classes, allow-list, every
redirect hop), time and size bounds, the concurrency bound, and the routes that take URLs.

Every connection goes to servers this file starts on 127.0.0.1; refusals of private, link-local
or multicast addresses are tested by classifying addresses (and through a stubbed resolver),
never by connecting to them.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.errors import ApiError
from service.fetching import ImageFetcher
from service.settings import Settings

DIM = 32  # gapfix-tiny


def png(color: Any = "red", size: tuple[int, int] = (64, 48), noise: bool = False) -> bytes:
    img = Image.new("RGB", size, color)
    if noise:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE, NOISE = png("red"), png((0, 40, 220), (30, 70)), png(size=(120, 120), noise=True)


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 serving test images, redirects and failures; it
    records each request's path and Host header and the most requests it had in flight."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str, length: bool = True,
                      extra: dict[str, str] | None = None) -> None:  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path
                with outer.lock:
                    outer.requests.append((path, self.headers.get("Host", "")))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    outer.route(self, path)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def route(self, h: Any, path: str) -> None:
        if path in ("/red.png", "/host"):
            h._send(200, RED, "image/png")
        elif path == "/blue.png":
            h._send(200, BLUE, "application/octet-stream")
        elif path == "/noise.png":
            h._send(200, NOISE, "image/png")
        elif path == "/noise-unsized.png":  # no Content-Length: only counting while reading
            h._send(200, NOISE, "image/png", length=False)
        elif path == "/page.html":
            h._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif path == "/gzip":
            h._send(200, RED, "image/png", extra={"Content-Encoding": "gzip"})
        elif path == "/slow.png":
            time.sleep(0.25)
            h._send(200, RED, "image/png")
        elif path.startswith("/hops/"):  # /hops/N: N more redirects, then the image
            n = int(path.rsplit("/", 1)[1])
            target = "/red.png" if n <= 1 else f"/hops/{n - 1}"
            h._send(302, b"", "text/plain", extra={"Location": target})
        elif path.startswith("/to/"):  # /to/<port>/<path>: redirect to another loopback port
            _, _, port, rest = path.split("/", 3)
            h._send(307, b"", "text/plain", extra={"Location": f"http://127.0.0.1:{port}/{rest}"})
        else:
            h._send(404, b"no such file", "text/plain")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (a read timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    s = ImageServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def other() -> Iterator[ImageServer]:
    """A second loopback server that is never on the allow-list."""
    s = ImageServer()
    yield s
    s.close()


def settings(tmp: Path, **kw: Any) -> Settings:
    base = {"model": "none", "data_dir": tmp / "data"}
    return Settings(_env_file=None, **{**base, **kw})  # type: ignore[call-arg]


def fetch(s: Settings, urls: list[str], fetcher_hook: Any = None) -> list[bytes]:
    async def run() -> list[bytes]:
        f = ImageFetcher(s)
        if fetcher_hook is not None:
            fetcher_hook(f)
        try:
            return await f.fetch_images(urls, param="image_urls")
        finally:
            await f.aclose()

    return asyncio.run(run())


def refused(s: Settings, urls: list[str], param: str, type_: str = "fetch_failed", **kw) -> str:
    with pytest.raises(ApiError) as info:
        fetch(s, urls, **kw)
    exc = info.value
    assert exc.status == 400 and exc.param == param and exc.type == type_, exc.message
    assert exc.message.startswith(f"{param}: ")
    return exc.message


# ------------------------------------------------------------------------ the fetcher
def test_allowed_urls_are_fetched_in_order_through_redirects(tmp_path: Path, server) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}")
    urls = [f"{server.url}/blue.png", f"{server.url}/red.png", f"{server.url}/hops/3"]
    assert fetch(s, urls) == [BLUE, RED, RED]


def test_loopback_not_on_the_allow_list_is_refused_before_connecting(
    tmp_path: Path, server, other
) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}")
    before = len(other.requests)
    msg = refused(s, [f"{server.url}/red.png", f"{other.url}/red.png"], "image_urls[1]",
                  "url_refused")  # fmt: skip
    assert "loopback" in msg and "GAPFIX_URL_ALLOW" in msg
    refused(settings(tmp_path), [f"{server.url}/red.png"], "image_urls[0]", "url_refused")
    assert len(other.requests) == before


def test_every_redirect_hop_is_checked(tmp_path: Path, server, other) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}")
    before = len(other.requests)
    msg = refused(s, [f"{server.url}/to/{other.port}/red.png"], "image_urls[0]", "url_refused")
    assert f"redirect 1: http://127.0.0.1:{other.port}/red.png" in msg
    assert len(other.requests) == before  # the second server never saw the request
    # with both allowed the same redirect is followed
    both = settings(tmp_path, url_allow=f"127.0.0.1:{server.port},127.0.0.1:{other.port}")
    assert fetch(both, [f"{server.url}/to/{other.port}/blue.png"]) == [BLUE]


def test_more_than_three_redirects_is_refused(tmp_path: Path, server) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}")
    msg = refused(s, [f"{server.url}/red.png", f"{server.url}/hops/4"], "image_urls[1]")
    assert "more than 3 times" in msg


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    silent = SilentServer()
    try:
        s = settings(tmp_path, url_allow="127.0.0.0/8", url_timeout_s=0.5)
        t0 = time.perf_counter()
        msg = refused(s, [f"http://127.0.0.1:{silent.port}/x.png"], "image_urls[0]")
        took = time.perf_counter() - t0
        assert "timed out" in msg and 0.4 < took < 3, took
        s = settings(tmp_path, url_allow="127.0.0.0/8", url_total_timeout_s=0.5)
        msg = refused(s, [f"http://127.0.0.1:{silent.port}/x.png"], "image_urls[0]")
        assert "GAPFIX_URL_TOTAL_TIMEOUT_S" in msg
    finally:
        silent.close()


def test_bodies_over_the_byte_cap_are_cut_off(tmp_path: Path, server) -> None:
    cap = 4096
    assert len(NOISE) > 10 * cap
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}", max_image_bytes=cap)
    for path in ("noise.png", "noise-unsized.png"):  # declared length, then counted while read
        msg = refused(s, [f"{server.url}/{path}"], "image_urls[0]")
        assert f"larger than {cap} bytes" in msg
    assert fetch(s, [f"{server.url}/red.png"]) == [RED]  # small ones still pass


def test_failed_fetches_name_the_input(tmp_path: Path, server) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}")
    assert "HTTP 404" in refused(s, [f"{server.url}/missing.png"], "image_urls[0]")
    assert "compressed" in refused(s, [f"{server.url}/gzip"], "image_urls[0]")
    for url in ("ftp://127.0.0.1/x.png", "file:///etc/passwd", "/relative.png", "http://"):
        refused(s, [f"{server.url}/red.png", url], "image_urls[1]", "invalid_request")


def test_the_connection_goes_to_the_checked_address(tmp_path: Path, server) -> None:
    """The host is resolved once, checked, and the connection pinned to that address with the
    original Host header (a name that DNS cannot resolve reaches the server here)."""
    s = settings(tmp_path, url_allow=f"images.test:{server.port}")
    lookups: list[str] = []

    def hook(f: ImageFetcher) -> None:
        real = f.resolve

        async def resolve(host: str, port: int, param: str, where: str):
            lookups.append(host)
            if host == "images.test":
                return [ipaddress.ip_address("127.0.0.1")]
            return await real(host, port, param, where)

        f.resolve = resolve  # type: ignore[method-assign]

    assert fetch(s, [f"http://images.test:{server.port}/host"], hook) == [RED]
    assert server.requests[-1] == ("/host", f"images.test:{server.port}")
    assert lookups == ["images.test"]


def test_https_is_pinned_with_the_original_host_and_tls_name(tmp_path: Path) -> None:
    """What a hop connects to, computed without connecting: the checked address in the URL,
    the original Host header, and the host name for SNI and certificate checks."""
    s = settings(tmp_path, url_allow="*.corp.test")

    async def run() -> tuple:
        f = ImageFetcher(s)

        async def resolve(host: str, port: int, param: str, where: str):
            return [ipaddress.ip_address("fd00::7"), ipaddress.ip_address("10.9.8.7")]

        f.resolve = resolve  # type: ignore[method-assign]
        try:
            url = httpx.URL("https://img.corp.test:8443/a.png?x=1")
            return await f._pin(url, "image_urls[0]", str(url))
        finally:
            await f.aclose()

    target, headers, extensions = asyncio.run(run())
    assert str(target) == "https://[fd00::7]:8443/a.png?x=1"
    assert headers == {"Host": "img.corp.test:8443"}
    assert extensions == {"sni_hostname": "img.corp.test"}


def test_a_host_that_does_not_resolve_is_a_400(tmp_path: Path) -> None:
    def hook(f: ImageFetcher) -> None:  # the system resolver fails: no DNS traffic here
        async def getaddrinfo(*args: Any, **kw: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        asyncio.get_running_loop().getaddrinfo = getaddrinfo  # type: ignore[method-assign]

    msg = refused(settings(tmp_path), ["http://nowhere.test/x.png"], "image_urls[0]",
                  fetcher_hook=hook)  # fmt: skip
    assert "cannot resolve" in msg


def test_names_resolving_to_private_addresses_are_refused(tmp_path: Path) -> None:
    """Through a stubbed resolver: no connection is attempted to any of these addresses."""
    answers = {
        "metadata.test": ["169.254.169.254"],
        "intranet.test": ["10.20.30.40"],
        "mixed.test": ["8.8.8.8", "192.168.0.10"],  # refused: one address is private
        "group.test": ["239.1.2.3"],
    }

    def hook(f: ImageFetcher) -> None:
        async def resolve(host: str, port: int, param: str, where: str):
            return [ipaddress.ip_address(a) for a in answers[host]]

        f.resolve = resolve  # type: ignore[method-assign]

    s = settings(tmp_path)
    for host, why in [("metadata.test", "link-local"), ("intranet.test", "private"),
                      ("mixed.test", "private"), ("group.test", "multicast")]:  # fmt: skip
        msg = refused(
            s, [f"https://{host}/x.jpg"], "image_urls[0]", "url_refused", fetcher_hook=hook
        )
        assert f"a {why} address" in msg and answers[host][-1] not in msg


def test_fetches_are_bounded_per_process(tmp_path: Path, server) -> None:
    s = settings(tmp_path, url_allow=f"127.0.0.1:{server.port}", url_fetch_concurrency=2)
    server.max_in_flight = 0
    t0 = time.perf_counter()
    assert fetch(s, [f"{server.url}/slow.png"] * 6) == [RED] * 6
    assert server.max_in_flight == 2
    assert time.perf_counter() - t0 >= 3 * 0.25


# ------------------------------------------------------------------------ routes
@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, server) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("fetch-api")
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, model="gapfix-tiny", pretrained="none", device="cpu", data_dir=data,
        url_allow=f"127.0.0.1:{server.port}", max_image_bytes=8192,
    )  # fmt: skip
    with TestClient(create_app(s)) as c:
        yield c


def err(r: Any, status: int, param: str, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["param"] == param, e
    if type_ is not None:
        assert e["type"] == type_, e
    return e


def test_embed_image_urls_equal_the_same_images_sent_inline(client: TestClient, server) -> None:
    import base64

    inline = client.post(
        "/v1/embed", json={"images": [base64.b64encode(b).decode() for b in (RED, BLUE)]}
    )
    assert inline.status_code == 200, inline.text
    mixed = client.post(
        "/v1/embed",
        json={"texts": ["a red square"], "images": [base64.b64encode(RED).decode()],
              "image_urls": [f"{server.url}/blue.png"]},
    )  # fmt: skip
    assert mixed.status_code == 200, mixed.text
    iv = np.asarray(mixed.json()["images"])
    assert iv.shape == (2, DIM) and np.allclose(iv, inline.json()["images"], atol=1e-6)
    multipart = client.post(
        "/v1/embed",
        data={"image_urls": [f"{server.url}/red.png", f"{server.url}/hops/2"]},
        files=[("images", ("b.png", BLUE, "image/png"))],
    )
    assert multipart.status_code == 200, multipart.text
    mv = np.asarray(multipart.json()["images"])
    assert np.allclose(mv, np.asarray(inline.json()["images"])[[1, 0, 0]], atol=1e-6)


def test_embed_bad_urls_are_400s_naming_the_index(client: TestClient, server, other) -> None:
    def post(*paths: str) -> Any:
        return client.post("/v1/embed", json={"image_urls": list(paths)})

    ok = f"{server.url}/red.png"
    err(post(ok, f"{other.url}/red.png"), 400, "image_urls[1]", "url_refused")
    err(post(ok, ok, f"{server.url}/to/{other.port}/red.png"), 400, "image_urls[2]", "url_refused")
    e = err(post(f"{server.url}/page.html"), 400, "image_urls[0]", "invalid_request")
    assert "not a usable image" in e["message"]
    e = err(post(ok, f"{server.url}/noise.png"), 400, "image_urls[1]", "fetch_failed")
    assert "GAPFIX_MAX_IMAGE_BYTES" in e["message"]
    err(post(f"{server.url}/hops/4"), 400, "image_urls[0]", "fetch_failed")
    err(post("gopher://127.0.0.1/x"), 400, "image_urls[0]", "invalid_request")
    err(client.post("/v1/embed", json={"image_urls": [""]}), 422, "image_urls[0]")


def test_ingest_image_urls_all_or_nothing(client: TestClient, server, other) -> None:
    assert client.post("/v1/collections", json={"name": "web"}).status_code == 201
    items = [
        {"id": "a", "image_url": f"{server.url}/red.png", "metadata": {"src": "web"}},
        {"id": "b", "image_url": f"{server.url}/blue.png", "text": "blue"},
    ]
    r = client.post("/v1/collections/web/items", json={"items": items})
    assert r.status_code == 200 and r.json()["added"] == 2, r.text
    assert client.get("/v1/collections/web/items/a/thumbnail").status_code == 200
    assert client.get("/v1/collections/web/items/b").json()["modality"] == "document"
    enc = client.app.state.gapfix.encoder
    got = np.asarray(
        client.get("/v1/collections/web/items/a?vectors=true").json()["vectors"]["image"]
    )
    assert np.allclose(got, enc.encode_images([RED])[0], atol=1e-5)
    count = client.get("/v1/collections/web").json()["count"]
    for bad, type_ in [(f"{other.url}/red.png", "url_refused"),
                       (f"{server.url}/missing.png", "fetch_failed"),
                       (f"{server.url}/page.html", "invalid_request")]:  # fmt: skip
        batch = [{"id": "c", "text": "fine"}, {"id": "d", "image_url": bad}]
        r = client.post("/v1/collections/web/items", json={"items": batch})
        err(r, 400, "items[1].image_url", type_)
        assert client.get("/v1/collections/web").json()["count"] == count
    both = {"id": "e", "image_url": f"{server.url}/red.png", "image": "AAAA"}
    r = client.post("/v1/collections/web/items", json={"items": [both]})
    assert r.status_code == 422 and "not both" in r.json()["error"]["message"]


@pytest.mark.slow
def test_a_live_server_fetches_allowed_urls_and_refuses_others(
    tmp_path: Path, server, other
) -> None:
    """``gapfix serve`` with the allow-list from the environment, as deployed."""
    import base64
    import os
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    env.update(GAPFIX_URL_ALLOW=f"127.0.0.1:{server.port}", GAPFIX_API_KEYS="k")
    log = tmp_path / "serve.log"
    gapfix = str(Path(sys.executable).parent / "gapfix")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [gapfix, "serve", "--model", "gapfix-tiny", "--pretrained", "none", "--data-dir",
             str(tmp_path / "data"), "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(base_url=base, headers=auth, timeout=60) as c:
            inline = c.post("/v1/embed", json={"images": [base64.b64encode(BLUE).decode()]})
            fetched = c.post("/v1/embed", json={"image_urls": [f"{server.url}/hops/1",
                                                               f"{server.url}/blue.png"]})  # fmt: skip
            assert fetched.status_code == 200, fetched.text
            got, want = np.asarray(fetched.json()["images"]), np.asarray(inline.json()["images"])
            assert np.allclose(got[1], want[0], atol=1e-6) and not np.allclose(got[0], got[1])
            r = c.post("/v1/embed", json={"image_urls": [f"{other.url}/red.png"]})
            err(r, 400, "image_urls[0]", "url_refused")
            assert c.post("/v1/collections", json={"name": "p"}).status_code == 201
            items = [{"id": "a", "image_url": f"{server.url}/red.png"},
                     {"id": "b", "image_url": f"{server.url}/to/{other.port}/red.png"}]  # fmt: skip
            err(c.post("/v1/collections/p/items", json={"items": items}), 400, "items[1].image_url")
            assert c.get("/v1/collections/p").json()["count"] == 0
            r = c.post("/v1/collections/p/items", json={"items": items[:1]})
            assert r.status_code == 200 and c.get("/v1/collections/p").json()["count"] == 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_openai_embeddings_private_and_timing_out_urls(tmp_path: Path, server) -> None:
    """``/v1/embeddings`` image URLs: a name resolving to a private address (stubbed resolver:
    nothing connects to it) and a URL that times out are 400s in OpenAI's shape naming the
    input, and nothing is written."""
    silent = SilentServer()
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, model="gapfix-tiny", pretrained="none", device="cpu",
        data_dir=tmp_path / "data", url_timeout_s=0.5,
        url_allow=f"127.0.0.1:{server.port},127.0.0.1:{silent.port}",
    )  # fmt: skip
    try:
        with TestClient(create_app(s)) as c:
            fetcher = c.app.state.gapfix.fetcher
            real = fetcher.resolve

            async def resolve(host: str, port: int, param: str, where: str):
                if host == "intranet.test":
                    return [ipaddress.ip_address("10.20.30.40")]
                return await real(host, port, param, where)

            fetcher.resolve = resolve
            before = sorted(str(p) for p in (tmp_path / "data").rglob("*"))
            ok = f"{server.url}/red.png"
            cases = [([ok, "https://intranet.test/x.jpg"], "input[1]", "url_refused", "private"),
                     ([f"http://127.0.0.1:{silent.port}/x.png"], "input[0]", "fetch_failed",
                      "timed out")]  # fmt: skip
            for urls, param, code, why in cases:
                t0 = time.perf_counter()
                r = c.post("/v1/embeddings", json={"model": "gapfix-tiny/none", "input": urls,
                                                   "modality": "image"})  # fmt: skip
                assert r.status_code == 400, r.text
                e = r.json()["error"]
                assert set(e) == {"message", "type", "param", "code"}
                assert (e["param"], e["code"], e["type"]) == (param, code, "invalid_request_error")
                assert why in e["message"] and time.perf_counter() - t0 < 5
            r = c.post("/v1/embeddings", json={"model": "gapfix-tiny/none", "input": [ok],
                                               "modality": "image"})  # fmt: skip
            assert r.status_code == 200  # the same app fetches an allowed URL
            assert sorted(str(p) for p in (tmp_path / "data").rglob("*")) == before
    finally:
        silent.close()
