"""The client's error: a gapfix (or OpenAI-shaped) error envelope, raised as an exception."""

from __future__ import annotations

from typing import Any

import httpx
import orjson


class GapfixClientError(Exception):
    """A request the server refused (or that never got an answer).

    ``status`` is the HTTP status (0 when no response came back); ``type``, ``message`` and
    ``param`` come from the error envelope ``{"error": {"type", "message", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.body = body
        where = f" [{param}]" if param else ""
        super().__init__(f"{status} {type or 'error'}{where}: {message}")


def error_from_response(resp: httpx.Response) -> GapfixClientError:
    """The envelope of an error response (gapfix's or OpenAI's shape; else the raw text)."""
    body: Any
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = resp.text
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return GapfixClientError(
            resp.status_code,
            str(err.get("message", "")),
            type=err.get("type"),
            param=err.get("param"),
            body=body,
        )
    if isinstance(err, str):  # TEI / Weaviate contracts
        return GapfixClientError(resp.status_code, err, type=body.get("error_type"), body=body)
    text = body if isinstance(body, str) else resp.text
    return GapfixClientError(resp.status_code, text.strip()[:2000] or resp.reason_phrase, body=body)
