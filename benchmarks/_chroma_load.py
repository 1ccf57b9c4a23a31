"""Load a ``.npy`` of unit vectors into a Chroma server on 127.0.0.1 (a new HNSW collection,
``ip`` space, Chroma's other HNSW settings at their defaults), row ``n`` as id ``in``.

Run by ``benchmarks.bench_chroma`` with the Chroma venv's python (``.venv-chroma``; chromadb is
not a gapfix dependency): ``python _chroma_load.py --port P --vectors x.npy``. Prints one JSON
line: ``{"id": collection id, "count": rows, "seconds": load time, "configuration": ...}``.
"""

from __future__ import annotations

import argparse
import json
import time

import chromadb
import numpy as np
from chromadb.config import Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--name", default="bench")
    args = ap.parse_args(argv)
    x = np.load(args.vectors, mmap_mode="r")
    client = chromadb.HttpClient(
        host="127.0.0.1", port=args.port, settings=Settings(anonymized_telemetry=False)
    )
    coll = client.create_collection(
        args.name, configuration={"hnsw": {"space": "ip"}}, embedding_function=None
    )
    step = client.get_max_batch_size()
    t0 = time.perf_counter()
    for start in range(0, len(x), step):
        stop = min(len(x), start + step)
        rows = np.ascontiguousarray(x[start:stop], dtype=np.float32)
        coll.add(ids=[f"i{n}" for n in range(start, stop)], embeddings=rows)
    took = time.perf_counter() - t0
    hnsw = (coll.configuration or {}).get("hnsw") or {}
    print(json.dumps({"id": str(coll.id), "count": coll.count(), "seconds": took, "hnsw": hnsw}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
