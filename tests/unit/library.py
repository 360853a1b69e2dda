"""The passages the domain unit tests search, read and cite."""

from __future__ import annotations

from shared.contracts import Chunk

CHUNKS = [
    Chunk(
        doc_id="engine",
        chunk_id=0,
        title="The step engine",
        url="https://example.com/engine",
        content="Each step of a job is one queue message. A step commits by writing its checkpoint create-only, "
        "so a duplicate delivery can never commit the same step twice.",
    ),
    Chunk(
        doc_id="engine",
        chunk_id=1,
        title="The step engine",
        content="Transient model errors reschedule the step with backoff.\nPermanent errors fail the job at once.",
    ),
    Chunk(
        doc_id="backup",
        chunk_id=0,
        title="バックアップと復元",
        content="ナレッジインデックスは毎日バックアップされます。復元後は件数とチェックサムを検証します。",
    ),
    *[
        Chunk(doc_id="tides", chunk_id=n, title="Tides", content=f"Passage {n} about tidal energy and kelp forests.")
        for n in range(8)
    ],
]


def chunk(doc_id: str, chunk_id: int) -> Chunk:
    """The CHUNKS entry with that key."""
    return next(c for c in CHUNKS if (c.doc_id, c.chunk_id) == (doc_id, chunk_id))
