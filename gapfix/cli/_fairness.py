"""`gapfix eval --groups G --harmful IDX`: load the audit inputs and print its tables."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gapfix.errors import InputError
from gapfix.io import load_array


def load_groups(spec: str) -> np.ndarray:
    """Group labels (one per image row) from ``G.npy``, ``F.npz:key`` or ``F.parquet:col``."""
    return np.asarray(load_array(spec, param="--groups"))


def check_audit_options(groups: str | None, harmful: list[str] | None) -> None:
    """--groups and --harmful go together."""
    if (groups is None) != (not harmful):
        raise InputError(
            "--groups (one group label per image) and --harmful (class indices counted "
            "harmful) go together",
            "--harmful" if groups is not None else "--groups",
        )


def print_audit(console: Console, audit: dict[str, Any], method: str | None) -> None:
    """One table per space (raw, corrected): harmful-label rate per group and category."""
    sets = list(audit["harmful_sets"])
    for space in ("raw", "corrected"):
        rep = audit.get(space)
        if rep is None:
            continue
        title = "raw" if space == "raw" else f"corrected ({method})"
        table = Table(title=f"Fairness audit, {title}: share of each group given a harmful label")
        table.add_column("group")
        table.add_column("images")
        table.add_column("any harmful")
        for name in sets:
            table.add_column(name)
        for g, count in rep["groups"].items():
            cells = [f"{rep['denigration'][name][g]:.4f}" for name in sets]
            table.add_row(g, str(count), f"{rep['harmful_rate'][g]:.4f}", *cells)
        gaps = [f"{rep['denigration'][name]['largest_gap']:.4f}" for name in sets]
        table.add_row("largest gap", "", f"{rep['largest_gap']:.4f}", *gaps)
        console.print(table)
        line = (
            f"{title}: worst group {rep['worst_group']} ({rep['worst_group_rate']:.4f}), "
            f"overall harmful rate {rep['harmful_rate_overall']:.4f}"
        )
        if "top1" in rep:
            line += f", zero-shot top-1 {rep['top1']:.4f}"
        console.print(line)
