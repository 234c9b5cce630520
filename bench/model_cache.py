"""First load of the embedded GGUF (convert + cache) against a cached load.

Writes bench/results/model_cache.json. Uses a fresh temporary cache so the first load really
converts.

    .venv/bin/python bench/model_cache.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fedkt.models import EMBEDDED, load_model_and_tokenizer
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]


def timed_load(cache_dir: Path) -> float:
    start = time.perf_counter()
    load_model_and_tokenizer(EMBEDDED, cache_dir=cache_dir)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        first = timed_load(cache)
        cached = [timed_load(cache) for _ in range(3)]
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    results = {
        "model": EMBEDDED,
        "first_load_convert_seconds": first,
        "cached_load_seconds": cached,
        "cache_bytes": size,
    }
    write_json(REPO / "bench" / "results" / "model_cache.json", results)
    print(results)


if __name__ == "__main__":
    main()
