"""Store errors: the service maps ``NotFoundError`` to 404 and ``ConflictError`` to 409."""

from __future__ import annotations

from gapfix.errors import GapfixError


class NotFoundError(GapfixError, LookupError):
    """A collection or item that does not exist. ``param`` names the request field, if any."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConflictError(GapfixError):
    """The request conflicts with the stored state: a duplicate collection or item id."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
