"""Errors of the encoder package."""

from __future__ import annotations

from gapfix.errors import GapfixError


class ModelLoadError(GapfixError, RuntimeError):
    """The encoder could not be built: unknown model/tag, missing file, weights unreachable.

    ``param`` names the setting to fix (``model``, ``pretrained``, ``device``).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EncoderClosedError(GapfixError, RuntimeError):
    """A request reached a `MicroBatcher` after it was closed (service shutting down)."""
