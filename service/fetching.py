"""Images by URL, fetched server-side (httpx) behind the SSRF guard of ``service.url_guard``.

Every hop, the first and each redirect (at most ``MAX_REDIRECTS``, followed by hand), is
checked before anything is sent: http or https only; the host resolved (getaddrinfo, off the
event loop) and every address it resolves to checked; the connection then goes to the checked
address (the URL's host pinned to it, with the original Host header and TLS SNI/certificate
name), so a DNS answer that changes between check and connect cannot redirect it. Bodies are
read as a stream and cut off past ``GAPFIX_MAX_IMAGE_BYTES``; connect and read time out after
``GAPFIX_URL_TIMEOUT_S`` each, a whole fetch after ``GAPFIX_URL_TOTAL_TIMEOUT_S``; at most
``GAPFIX_URL_FETCH_CONCURRENCY`` fetches run at once per process. Any failure is a 400 in the
error envelope whose ``param`` names the input (``image_urls[3]``, ``items[2].image_url``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from service.errors import ApiError
from service.url_guard import AllowList, IPAddress, normalize_host, refusal

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("gapfix.service")

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = ("http", "https")
USER_AGENT = "gapfix-image-fetcher"


class FetchError(ApiError):
    """An image URL that could not be fetched (400): refused, unreachable, too large, ..."""

    def __init__(self, param: str, message: str, type: str = "fetch_failed") -> None:
        super().__init__(400, f"{param}: {message}", param=param, type=type)


class ImageFetcher:
    """Fetches image bytes by URL for any route: ``await fetcher.fetch_images(urls, param=...)``.

    One per app (``AppState.fetcher``): holds the httpx client and the concurrency bound."""

    def __init__(self, settings: Settings) -> None:
        self.allow = AllowList.parse(settings.url_allow)
        self.max_bytes = settings.max_image_bytes
        self.total_timeout = settings.url_total_timeout_s
        self._sem = asyncio.Semaphore(settings.url_fetch_concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.url_timeout_s),
            follow_redirects=False,  # by hand: every hop is checked
            trust_env=False,  # never through an environment proxy: we connect where we checked
            # no pooled connections: a kept-alive TLS connection to an address could otherwise
            # serve another host name pinned to the same address under the first one's SNI
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_images(self, urls: Sequence[str], *, param: str | Sequence[str]) -> list[bytes]:
        """The bodies of ``urls``, in order, fetched concurrently (within the process bound).

        ``param`` names the inputs in errors: a string ``p`` names URL ``i`` ``p[i]``, a
        sequence gives each URL's name. The first failing input (lowest index among those that
        failed before the rest were cancelled) is raised as a 400 `FetchError`."""
        names = [f"{param}[{i}]" for i in range(len(urls))] if isinstance(param, str) else param
        if len(names) != len(urls):
            raise ValueError("one param per URL")
        out: list[bytes] = [b""] * len(urls)
        failed: dict[int, ApiError] = {}

        async def one(i: int) -> None:
            try:
                out[i] = await self.fetch(urls[i], names[i])
            except ApiError as exc:
                failed[i] = exc
                raise

        try:
            async with asyncio.TaskGroup() as group:
                for i in range(len(urls)):
                    group.create_task(one(i))
        except BaseExceptionGroup as eg:
            if failed:
                raise failed[min(failed)] from None
            raise eg.exceptions[0] from None
        return out

    async def fetch(self, url: str, param: str) -> bytes:
        """One URL's body (redirects followed and checked, size and time bounded)."""
        async with self._sem:
            try:
                async with asyncio.timeout(self.total_timeout):
                    return await self._fetch(url, param)
            except TimeoutError:
                raise FetchError(
                    param,
                    f"fetching {url} took longer than {self.total_timeout:g} s "
                    "(GAPFIX_URL_TOTAL_TIMEOUT_S)",
                ) from None

    async def _fetch(self, url: str, param: str) -> bytes:
        current = _parse(url, param)
        for hop in range(MAX_REDIRECTS + 1):
            where = url if hop == 0 else f"{url} (redirect {hop}: {current})"
            target, headers, extensions = await self._pin(current, param, where)
            try:
                async with self._client.stream(
                    "GET", target, headers=headers, extensions=extensions
                ) as resp:
                    if resp.status_code in REDIRECT_STATUSES:
                        location = resp.headers.get("location")
                        if not location:
                            raise FetchError(param, f"{where} redirects without a Location")
                        if hop == MAX_REDIRECTS:
                            raise FetchError(
                                param, f"{url} redirects more than {MAX_REDIRECTS} times"
                            )
                        try:
                            current = _parse(str(current.join(location)), param)
                        except httpx.InvalidURL:
                            raise FetchError(param, f"{where} redirects to a bad URL") from None
                        continue
                    if resp.status_code != 200:
                        raise FetchError(param, f"{where} answered HTTP {resp.status_code}")
                    return await self._read(resp, param, where)
            except httpx.TimeoutException:
                raise FetchError(
                    param, f"{where} timed out (GAPFIX_URL_TIMEOUT_S: connect and read)"
                ) from None
            except httpx.HTTPError as exc:
                raise FetchError(
                    param, f"cannot fetch {where}: {exc or type(exc).__name__}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, resp: httpx.Response, param: str, where: str) -> bytes:
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # asked for identity: a compressed body could bomb
            raise FetchError(param, f"{where} sent a compressed body (Content-Encoding {encoding})")
        too_large = f"{where} is larger than {self.max_bytes} bytes (GAPFIX_MAX_IMAGE_BYTES)"
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(param, too_large)
        body = bytearray()
        async for chunk in resp.aiter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError(param, too_large)
        if not body:
            raise FetchError(param, f"{where} returned an empty body")
        return bytes(body)

    async def _pin(
        self, url: httpx.URL, param: str, where: str
    ) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """Resolve and check ``url``'s host; the URL pinned to a checked address, with the
        Host header and TLS server name of the original."""
        host = normalize_host(url.raw_host.decode("ascii"))
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await self.resolve(host, port, param, where)
        if not self.allow.allows_host(host, port):
            for ip in addresses:
                why = refusal(ip)
                if why is not None and not self.allow.allows_address(ip, port):
                    log.warning(
                        "refused image URL %s: %s resolves to %s (%s)", where, host, ip, why
                    )
                    raise FetchError(
                        param,
                        f"{where} resolves to a {why} address; fetching it is refused "
                        "(an operator can allow it with GAPFIX_URL_ALLOW)",
                        type="url_refused",
                    )
        headers = {"Host": url.netloc.decode("ascii")}
        extensions = {}
        if url.scheme == "https" and not _is_ip(host):
            extensions["sni_hostname"] = host
        return url.copy_with(host=str(addresses[0])), headers, extensions

    async def resolve(self, host: str, port: int, param: str, where: str) -> list[IPAddress]:
        """Every address ``host`` resolves to (getaddrinfo in a worker thread)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise FetchError(param, f"cannot resolve the host of {where}") from None
        addresses: list[IPAddress] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise FetchError(param, f"cannot resolve the host of {where}")
        return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse(url: str, param: str) -> httpx.URL:
    """An absolute http(s) URL with a host, or a 400 naming ``param``."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError(param, "empty URL", type="invalid_request")
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise FetchError(param, f"not a valid URL ({exc})", type="invalid_request") from None
    if parsed.scheme not in SCHEMES:
        raise FetchError(
            param,
            f"unsupported URL scheme {parsed.scheme or '(none)'!r}: http and https only",
            type="invalid_request",
        )
    if not parsed.raw_host:
        raise FetchError(param, f"URL {url!r} has no host", type="invalid_request")
    return parsed
