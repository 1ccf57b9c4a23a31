"""Exceptions shared by the library, the CLI (exit code 2) and the HTTP service (4xx)."""

from __future__ import annotations


class GapfixError(Exception):
    """Base class of every error gapfix raises on purpose."""


class InputError(GapfixError, ValueError):
    """Bad input from the caller: a shape, a value, a parameter, a file.

    ``param`` names the offending argument (CLI flag, JSON field) when known; the service
    maps this to HTTP 400/422 and the CLI to a one-line message with exit code 2.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFittedError(GapfixError, RuntimeError):
    """A transform was used before ``fit``."""


class ArtifactError(InputError):
    """A transform artifact is unreadable, of an unknown format version, or mismatched."""


class PayloadTooLargeError(InputError):
    """Input larger than a configured limit (image pixels, request size): HTTP 413."""
