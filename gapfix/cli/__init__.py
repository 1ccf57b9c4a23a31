"""`gapfix` command line. Each module registers its own commands on the shared Typer app."""

from __future__ import annotations

from gapfix.cli import (
    core,  # noqa: F401  (stats, fit, apply, eval)
    jobs,  # noqa: F401
    serve,  # noqa: F401  (serve: the HTTP API)
)
from gapfix.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
