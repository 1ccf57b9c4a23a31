"""Run every `benchmarks/bench_*.py` module and print one table of ratios.

Each module exposes ``run() -> list[BenchResult]``. ``python -m benchmarks [name ...]`` runs the
named modules only (e.g. ``transforms``). Results also go to ``bench-results/latest.json``.
``python -m benchmarks scale ARGS`` runs the opt-in scale benchmark (``benchmarks.scale``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._common import BenchResult


def _modules(selected: list[str]) -> list[str]:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if selected:
        names = [n for n in names if n.removeprefix("bench_") in selected or n in selected]
    return names


def main(argv: list[str]) -> int:
    if argv[:1] == ["scale"]:  # opt-in: never part of a plain run
        from benchmarks import scale

        return scale.main(argv[1:])
    console = Console()
    results: list[BenchResult] = []
    for name in _modules(argv):
        console.print(f"[bold]running {name}[/bold]")
        t0 = time.perf_counter()
        mod = importlib.import_module(f"benchmarks.{name}")
        results.extend(mod.run())
        console.print(f"  done in {time.perf_counter() - t0:.1f}s")
    table = Table(title="gapfix benchmarks (ratios measured in this run)")
    for col in ("benchmark", "value", "baseline", "ratio", "target", "note"):
        table.add_column(col)
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        base = f"{r.baseline:.4g} {r.unit} ({r.baseline_name})" if r.baseline is not None else "-"
        target = f">= {r.target}" if r.target is not None else "-"
        table.add_row(r.name, f"{r.value:.4g} {r.unit}", base, ratio, target, r.note)
    console.print(table)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
