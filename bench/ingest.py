"""Ingest throughput on a folder of 1,000 mixed files (Markdown, text, HTML, PDF, Word), embedded backends.

Three ways over the same files, in this run:
  anchor   the files' text, already extracted, indexed as JSON documents (chunking + index writes only)
  direct   `agentctl docs ingest`'s path: detect, extract, chunk, version, index, record per file
  job      an ingestion job: batches stored, one queue message per batch, drained by the app's handler
and a re-ingest of the unchanged folder (every file `unchanged`). Ratios are against the anchor.

    python bench/ingest.py [--files 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.documents import docx, html_page, pdf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("md", "txt", "html", "pdf", "docx")


def sentences() -> list[str]:
    from shared.text import split_sentences

    out = []
    for path in sorted((ROOT / "samples").glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        out += [text[a:b] for a, b in split_sentences(text) if not text[a:b].lstrip().startswith(("#", "`", "|"))]
    return [s for s in out if 20 < len(s) < 300]


def make_files(n: int) -> list[tuple[str, bytes]]:
    """n files, a fifth of each kind, 3-40 sentences each (PDF and Word files are Latin text: the fonts)."""
    import random

    rng = random.Random(15)
    pool = sentences()
    latin = [s for s in pool if all(ord(c) < 256 for c in s)]
    files = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        body = rng.sample(latin if kind in ("pdf", "docx") else pool, rng.randint(3, 40))
        title = f"Runbook {i}"
        if kind == "md":
            data = (
                f"# {title}\n\n## Part one\n\n"
                + " ".join(body[: len(body) // 2])
                + "\n\n## Part two\n\n"
                + " ".join(body[len(body) // 2 :])
            ).encode()
        elif kind == "txt":
            data = "\n\n".join(body).encode()
        elif kind == "html":
            data = html_page(title, f"<article><h1>{title}</h1>" + "".join(f"<p>{s}</p>" for s in body) + "</article>")
        elif kind == "pdf":
            data = pdf([body[k : k + 8] for k in range(0, len(body), 8)], title=title)
        else:
            data = docx([("Title", title), ("Heading 1", "Part one")] + [("Normal", s) for s in body])
        files.append((f"folder/{i:05d}-{title.replace(' ', '-').lower()}.{kind}", data))
    return files


def fresh_backends(root: Path, name: str):  # type: ignore[no-untyped-def]
    from shared.bootstrap import build_backends
    from shared.settings import Settings

    os.environ["DATA_DIR"] = str(root / name)
    return build_backends(Settings())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    for name in list(os.environ):
        if name.startswith(("AZURE_", "OPENAI_", "SEARCH_", "ServiceBus", "AzureWebJobs")):
            del os.environ[name]
    from shared.services import ingestion, knowledge
    from shared.services.extraction import extract
    from shared.services.messages import handle_message

    t = time.perf_counter()
    files = make_files(args.files)
    print(
        f"{len(files)} files ({', '.join(KINDS)}), {sum(len(d) for _, d in files) / 1e6:.1f} MB, made in "
        f"{time.perf_counter() - t:.1f} s"
    )

    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    extracted = []
    for name, data in files:
        t = time.perf_counter()
        source = knowledge.read_upload(name, data)
        per_kind[name.rsplit(".", 1)[1]].append((time.perf_counter() - t) * 1000)
        extracted.append(source)
    for kind, times in per_kind.items():
        print(f"  extract {kind:<5} {sum(times) / len(times):6.2f} ms/file")
    assert all(extract(n, d).content for n, d in files[:5])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        b = fresh_backends(root, "anchor")
        t = time.perf_counter()
        knowledge.index_documents(b, [s.document for s in extracted])
        anchor = time.perf_counter() - t
        anchor_chunks = b.index.count()
        b.close()

        b = fresh_backends(root, "direct")
        t = time.perf_counter()
        outcomes = knowledge.ingest(b, files)
        direct = time.perf_counter() - t
        chunks = b.index.count()
        t = time.perf_counter()
        again = Counter(o.status for o in knowledge.ingest(b, files))
        unchanged = time.perf_counter() - t
        b.close()

        b = fresh_backends(root, "job")
        t = time.perf_counter()
        job = ingestion.submit_ingestion(b, files)
        while messages := b.queue.receive(max_count=1):  # type: ignore[attr-defined]
            handle_message(b, messages[0].body, messages[0].delivery_count)
            b.queue.complete(messages[0])  # type: ignore[attr-defined]
        queued = time.perf_counter() - t
        done = ingestion.get_ingestion(b, job.id)
        b.close()

    statuses = Counter(o.status for o in outcomes)
    n = len(files)
    print(f"anchor  (pre-extracted JSON)  {n / anchor:7.1f} files/s  {anchor_chunks / anchor:7.1f} chunks/s  1.00")
    print(
        f"direct  (docs ingest)         {n / direct:7.1f} files/s  {chunks / direct:7.1f} chunks/s  "
        f"{anchor / direct:.2f} of anchor   {dict(statuses)}"
    )
    print(
        f"job     ({job.batches} batches)          {n / queued:7.1f} files/s  {done.chunks / queued:7.1f} chunks/s  "
        f"{anchor / queued:.2f} of anchor   status {done.status}"
    )
    print(
        f"re-ingest unchanged           {n / unchanged:7.1f} files/s  {anchor / unchanged:.2f}x anchor speed   "
        f"{dict(again)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
