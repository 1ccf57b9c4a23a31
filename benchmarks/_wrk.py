"""Debian's ``wrk`` (a C load generator) for the loopback load benchmarks (``bench_load``,
``bench_chroma``): a Lua script that POSTs a cycle of JSON bodies, one wrk run, and the parse
of its ``--latency`` report.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path


def lua_script(bodies: list[str]) -> str:
    """A wrk script POSTing ``bodies`` in turn, one per request (each wrk thread cycles them)."""
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        "bodies = {",
    ]
    lines += [f"  {json.dumps(b)}," for b in bodies]  # a JSON string is a valid Lua string
    lines += [
        "}",
        "i = 0",
        "request = function()",
        "  i = i % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[i])",
        "end",
    ]
    return "\n".join(lines) + "\n"


def write_lua(path: Path, bodies: list[str]) -> None:
    """Write ``lua_script(bodies)`` to ``path``."""
    path.write_text(lua_script(bodies))


def to_ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``3.21ms``, ``1.02s``) in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_report(out: str) -> dict:
    """q/s of answered (2xx/3xx) requests, p50/p99 in ms, non-2xx count and socket errors."""
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    done = re.search(r"(\d+) requests in ([\d.]+)(m|s),", out)
    total, took = int(done.group(1)), float(done.group(2)) * (60 if done.group(3) == "m" else 1)
    non2xx = int(bad.group(1)) if bad else 0
    return {
        "qps": (total - non2xx) / took,  # answered requests only
        "p50": to_ms(pct["50"]),
        "p99": to_ms(pct["99"]),
        "non2xx": non2xx,
        "socket_errors": errors.group(1) if errors else "",
    }


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    """``wrk --latency`` against ``url`` for ``seconds``; ``parse_report`` of its output."""
    threads = 1 if connections == 1 else 2  # a 30 s timeout: queued requests are not errors
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return parse_report(out)
