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
    """Console-script entry point. A usage error (unknown command, missing or bad option) is
    one line on stderr with exit code 2, like every other bad input."""
    import sys

    try:  # recent Typer vendors its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older Typer runs on click itself
        from click import exceptions as cx

    import typer

    try:
        code = app(standalone_mode=False)  # a command's typer.Exit comes back as its code
    except cx.NoArgsIsHelpError:  # bare `gapfix`: Typer has printed the help
        sys.exit(2)
    except cx.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "gapfix"
        line = " ".join(exc.format_message().split())
        print(f"gapfix: error: {line} (see '{command} --help')", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("gapfix: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
