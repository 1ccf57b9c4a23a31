"""The pure parts of ``benchmarks.profile_search``: py-spy raw lines and their grouping."""

from __future__ import annotations

import pytest

from benchmarks.profile_search import category, parse_raw, summarize

RAW = """\
MainThread;<module> (gapfix/cli/app.py:1);Runner.run (asyncio/runners.py:118) 40
MainThread;<module> (x.py:1);route_handler (service/routing.py:68);TypeAdapter.validate_python (pydantic/type_adapter.py:410) 10
MainThread;<module> (x.py:1);run_search (service/routers/search.py:88) 10
MainThread;<module> (x.py:1);dispatch (starlette/middleware/base.py:9);info (logging/__init__.py:1) 5
Thread-1;_worker (concurrent/futures/thread.py:81);search (gapfix/store/index.py:270);IndexIDMap.search (faiss/swigfaiss.py:13800) 20
Thread-1;_worker (concurrent/futures/thread.py:81);lookup (gapfix/store/db.py:331);execute (sqlite3/dbapi2.py:1) 5
Thread-2;_worker (concurrent/futures/thread.py:81);Condition.wait (threading.py:327) 10
not a sample line
"""


def test_raw_lines_are_parsed_and_grouped_by_the_innermost_matching_frame() -> None:
    samples = parse_raw(RAW)
    assert len(samples) == 7 and samples[0] == (
        "MainThread", ["<module> (gapfix/cli/app.py:1)", "Runner.run (asyncio/runners.py:118)"], 40
    )  # fmt: skip
    assert [category(f) for _, f, _ in samples] == [
        "uvloop native (socket I/O, HTTP parsing)",
        "JSON / pydantic",
        "gapfix / service code",
        "access log / logging",
        "FAISS search",
        "item lookup (SQLite)",
        "worker threads waiting for work",
    ]
    s = summarize(samples)
    assert s["all"]["FAISS search"] == pytest.approx(20 / 100)
    assert sum(s["all"].values()) == pytest.approx(1.0)
    # the busiest thread is the event loop's: 65 samples, none of them FAISS
    assert s["loop"]["uvloop native (socket I/O, HTTP parsing)"] == pytest.approx(40 / 65)
    assert "FAISS search" not in s["loop"]
    assert next(iter(s["top"])) == "Runner.run (asyncio/runners.py:118)"
    assert summarize([])["all"] == {}
