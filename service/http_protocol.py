"""uvicorn's HTTP/1.1 protocols with its own 400 (a request it cannot parse: a bad request
line, an invalid header, a malformed chunk) in the service's JSON error envelope instead of
plain text. ``gapfix serve`` runs uvicorn with ``http="service.http_protocol:HTTPProtocol"``.

uvicorn answers only one other status before the app sees a request: a plain-text 503 when
``limit_concurrency`` is exceeded, which ``gapfix serve`` does not set.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import envelope

MESSAGE = "malformed HTTP request: the server could not parse it"


def error_body() -> bytes:
    """The envelope uvicorn's 400 carries."""
    return json.dumps(envelope("invalid_request", MESSAGE, None)).encode()


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]


class H11JSONProtocol(H11Protocol):
    """uvicorn's h11 protocol, its 400 in the error envelope."""

    def send_400_response(self, msg: str) -> None:
        body = error_body()
        event = h11.Response(status_code=400, headers=_headers(body), reason=b"Bad Request")
        for output in (
            self.conn.send(event),
            self.conn.send(h11.Data(data=body)),
            self.conn.send(h11.EndOfMessage()),
        ):
            if output:
                self.transport.write(output)
        self.transport.close()


HTTPProtocol: type[asyncio.Protocol] = H11JSONProtocol
try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed: uvicorn uses h11 too
    pass
else:

    class HttpToolsJSONProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, its 400 in the error envelope."""

        def send_400_response(self, msg: str) -> None:
            body = error_body()
            content = [STATUS_LINE[400]]
            for name, value in [*self.server_state.default_headers, *_headers(body)]:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"\r\n", body])
            self.transport.write(b"".join(content))
            self.transport.close()

    HTTPProtocol = HttpToolsJSONProtocol  # what uvicorn's "auto" picks when httptools exists
