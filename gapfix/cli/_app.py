"""The Typer application object and the error guard every command uses."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from gapfix.errors import GapfixError

app = typer.Typer(
    name="gapfix",
    help="Measure and close the modality gap of CLIP-style embeddings; serve corrected search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print a one-line error to stderr and return the exit (code 2) to raise."""
    line = " ".join(str(message).split())
    print(f"gapfix: error: {line}", file=sys.stderr)
    return typer.Exit(code=2)


def guarded(fn: F) -> F:
    """Turn bad-input exceptions into a one-line error with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GapfixError as exc:
            raise fail(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]
