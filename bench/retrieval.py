"""Retrieval quality of the embedded index on the repository's own documents: hit@1, hit@3 and MRR.

The question set (bench/questions.json, English and Japanese) names for each question the
document(s) and the heading a useful passage sits under. The same documents are indexed twice in
this run: "before" chunks as the previous release did (sentence-packed, no overlap) and "after"
as ingestion now does (the same boundaries plus an overlap of whole sentences), both at
CHUNK_CHARS; the figures of the two are printed side by side, so the comparison is measured here,
not remembered. With --mode hybrid (or both, the default when requirements-hybrid.txt is
installed) the "after" chunks are also searched in SEARCH_MODE=hybrid (BM25 + all-MiniLM-L6-v2
vectors, reciprocal rank fusion), printed beside bm25.

    python bench/retrieval.py [--chunk-chars 800] [--overlap 100] [--top 10] [--mode bm25|hybrid|both]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.adapters.local.search import LocalKnowledgeIndex  # noqa: E402
from shared.contracts import Chunk  # noqa: E402
from shared.ports import KnowledgeIndex  # noqa: E402
from shared.services.chunking import chunk_document  # noqa: E402
from shared.services.knowledge import read_upload  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["samples/*.md", "docs/*.md"]


def documents() -> list[tuple[str, Path]]:
    return [(p.relative_to(ROOT).as_posix(), p) for pattern in CORPUS for p in sorted(ROOT.glob(pattern))]


def build(index: KnowledgeIndex, chunk_chars: int, overlap: int) -> dict[str, str]:
    """Index every document; return doc_id -> repository path."""
    names = {}
    for name, path in documents():
        source = read_upload(name, path.read_bytes())
        names[source.document.id] = name
        chunks = chunk_document(source.document, chunk_chars, overlap_chars=overlap, sections=source.sections)
        index.replace_document(source.document.id, chunks)
    return names


def relevant(chunk: Chunk, names: dict[str, str], answers: list[dict[str, str]]) -> bool:
    return any(names.get(chunk.doc_id) == a["doc"] and chunk.section == a["section"] for a in answers)


def evaluate(index: KnowledgeIndex, names: dict[str, str], questions: list[dict[str, Any]], top: int) -> dict:
    out: dict[str, dict[str, float]] = {}
    for lang in ("en", "ja"):
        asked = [q for q in questions if q["lang"] == lang]
        hit1 = hit3 = 0
        reciprocal = 0.0
        misses = []
        for q in asked:
            hits = index.search(q["q"], top=top)
            rank = next(
                (
                    i
                    for i, h in enumerate(hits, start=1)
                    if relevant(index.get_chunks(h.doc_id, h.chunk_id)[0], names, q["answers"])
                ),
                None,
            )
            hit1 += rank == 1
            hit3 += rank is not None and rank <= 3
            reciprocal += 1 / rank if rank else 0.0
            if rank != 1:
                misses.append(f"{q['q']} -> rank {rank}")
        n = len(asked)
        out[lang] = {"n": n, "hit@1": hit1 / n, "hit@3": hit3 / n, "mrr": reciprocal / n, "misses": misses}
    return out


def hybrid_available() -> bool:
    from shared.adapters.local.embeddings import missing_packages

    return not missing_packages()


def open_index(tmp: Path, label: str, mode: str) -> KnowledgeIndex:
    index = LocalKnowledgeIndex(tmp / f"{label}.sqlite3")
    if mode == "bm25":
        return index
    from shared.adapters.local.embeddings import load_encoder
    from shared.adapters.local.hybrid import HybridKnowledgeIndex

    return HybridKnowledgeIndex(index, tmp / f"{label}-vectors.sqlite3", load_encoder().encode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-chars", type=int, default=800)
    parser.add_argument("--overlap", type=int, default=100)
    parser.add_argument("--top", type=int, default=10, help="Results looked at for MRR.")
    parser.add_argument(
        "--mode",
        choices=("bm25", "hybrid", "both"),
        default="both" if hybrid_available() else "bm25",
        help="Search mode(s) of the 'after' index (hybrid needs requirements-hybrid.txt).",
    )
    parser.add_argument("--verbose", action="store_true", help="List the questions not answered at rank 1.")
    args = parser.parse_args()
    if args.mode != "bm25" and not hybrid_available():
        parser.error("--mode hybrid needs the optional packages: pip install -r requirements-hybrid.txt")
    questions = json.loads((ROOT / "bench" / "questions.json").read_text(encoding="utf-8"))["questions"]
    runs = [("before", 0, "bm25")]
    runs += [("after", args.overlap, mode) for mode in ("bm25", "hybrid") if args.mode in (mode, "both")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, overlap, mode in runs:
            index = open_index(Path(tmp), f"{label}-{mode}", mode)
            started = time.perf_counter()
            names = build(index, args.chunk_chars, overlap)
            built = time.perf_counter() - started
            results[(label, mode)] = (evaluate(index, names, questions, args.top), index.count(), built)
            index.close()
    print(f"corpus: {len(documents())} documents ({', '.join(CORPUS)}), CHUNK_CHARS={args.chunk_chars}")
    for (label, mode), (figures, chunks, built) in results.items():
        for lang, f in figures.items():
            print(
                f"{label:<7} {mode:<6} {lang}  n={f['n']:<3} hit@1 {f['hit@1']:.2f}  hit@3 {f['hit@3']:.2f}  "
                f"MRR {f['mrr']:.3f}   ({chunks} chunks, indexed in {built:.1f} s)"
            )
            if args.verbose:
                for miss in f["misses"]:
                    print(f"          miss: {miss}")
    for lang in ("en", "ja"):
        before = results[("before", "bm25")][0][lang]["mrr"]
        for (label, mode), (figures, _, _) in results.items():
            if label == "after":
                ratio = f"{figures[lang]['mrr'] / before:.3f}" if before else "n/a (before is 0)"
                print(f"MRR after {mode}/before ({lang}): {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
