"""Embedded search index speed: top-5 latency (p50/p90/p99) over a mixed English/Japanese corpus.

The corpus is built deterministically from samples/ sentences, recombined into ~5,000 chunks,
so the figures are repeatable on any machine.

    python bench/search.py [--chunks 5000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.adapters.local.search import LocalKnowledgeIndex  # noqa: E402
from shared.contracts import Chunk  # noqa: E402
from shared.text import split_sentences  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERIES = [
    "How are dead-lettered messages handled?",
    "バックアップの復元手順は？",
    "token budget alert",
    "チェックポイントはどのように保存されますか",
    "what happens when a worker crashes",
    "キャンセル",
    "restore verifies checksums",
    "メモリ不足への対処",
]


def corpus(n: int) -> list[Chunk]:
    sentences = []
    for path in sorted((ROOT / "samples").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        sentences += [text[a:b].strip() for a, b in split_sentences(text) if not text[a:b].lstrip().startswith("#")]
    rng = random.Random(7)
    return [
        Chunk(
            doc_id=f"doc-{i // 10}",
            chunk_id=i % 10,
            title=f"Document {i // 10}",
            content=" ".join(rng.sample(sentences, 6)),
        )
        for i in range(n)
    ]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = LocalKnowledgeIndex(Path(tmp) / "search.sqlite3")
        chunks = corpus(args.chunks)
        t0 = time.perf_counter()
        index.upsert(chunks)
        load = time.perf_counter() - t0
        for filtered in (False, True):
            latencies = []
            for i in range(args.queries):
                doc = f"doc-{i % (args.chunks // 10)}" if filtered else None
                t = time.perf_counter()
                index.search(QUERIES[i % len(QUERIES)], top=5, doc_id=doc)
                latencies.append((time.perf_counter() - t) * 1000)
            what = "top-5, filtered by document" if filtered else "top-5"
            print(
                f"{what:<30} p50 {pct(latencies, 0.5):6.2f} ms  p90 {pct(latencies, 0.9):6.2f} ms  "
                f"p99 {pct(latencies, 0.99):6.2f} ms"
            )
        print(f"corpus: {index.count()} chunks (en + ja), loaded in {load:.2f} s")
        index.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
