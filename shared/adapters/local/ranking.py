"""An in-memory mirror of the embedded index's FTS5 table that ranks a query in well under a millisecond.

FTS5 ranks by walking every posting of every query term through SQLite's virtual-table layer,
about 5 ms at 10,000 chunks. This mirror keeps the same postings as arrays (one per term) and
computes FTS5's own bm25() over them with vector arithmetic, so it returns the same ranking
FTS5 would (same k1, b, IDF floor, column weights and row length), only faster.

It is a cache, never the record: the SQLite file stays the durable store, and the mirror is
rebuilt from its pre-tokenized FTS5 text whenever the file's write generation (bumped by every
write, from any thread or process) differs from the one the mirror was built at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# FTS5's bm25() constants (fts5_aux.c).
K1 = 1.2
B = 0.75
IDF_FLOOR = 1e-6
MAX_CACHED_MASKS = 256  # scope sets remembered per mirror (one per tenant, in practice)


class RankingMirror:
    """Postings of every term, per row: FTS5's bm25() over them, for the rows' current generation.

    Scopes are a filter, not a partition: bm25's statistics (row count, average length, IDF) stay
    those of the whole index, as in FTS5 with a WHERE on the joined scope column, so a hit's score
    does not depend on who asks.
    """

    def __init__(
        self,
        rows: Iterable[tuple[int, str, str, str, str]],
        generation: int,
        title_weight: float,
        content_weight: float,
    ) -> None:
        """rows: (rowid, doc_id, scope, title terms, content terms), the terms space-joined as FTS5 holds them."""
        self.generation = generation
        rowids: list[int] = []
        lengths: list[int] = []
        slots_by_doc: dict[str, list[int]] = {}
        slots_by_scope: dict[str, list[int]] = {}
        term_slots: dict[str, list[int]] = {}
        term_freqs: dict[str, list[float]] = {}
        for slot, (rowid, doc_id, scope, title, content) in enumerate(sorted(rows)):
            rowids.append(rowid)
            slots_by_doc.setdefault(doc_id, []).append(slot)
            slots_by_scope.setdefault(scope, []).append(slot)
            title_terms, content_terms = title.split(), content.split()
            lengths.append(len(title_terms) + len(content_terms))
            weighted: dict[str, float] = {}
            for term in title_terms:
                weighted[term] = weighted.get(term, 0.0) + title_weight
            for term in content_terms:
                weighted[term] = weighted.get(term, 0.0) + content_weight
            for term, freq in weighted.items():
                term_slots.setdefault(term, []).append(slot)
                term_freqs.setdefault(term, []).append(freq)
        self.rowids = np.asarray(rowids, dtype=np.int64)
        rows_count = len(rowids)
        avgdl = (sum(lengths) / rows_count) if rows_count else 1.0
        # The per-row part of bm25()'s denominator: k1 * (1 - b + b * |D| / avgdl).
        self._norm = K1 * (1 - B + B * np.asarray(lengths, dtype=np.float64) / (avgdl or 1.0))
        self._postings = {
            term: (np.asarray(slots, dtype=np.int64), np.asarray(term_freqs[term], dtype=np.float64))
            for term, slots in term_slots.items()
        }
        self._idf = {term: _idf(rows_count, len(slots)) for term, slots in term_slots.items()}
        self._slots_by_doc = {doc: np.asarray(slots, dtype=np.int64) for doc, slots in slots_by_doc.items()}
        self._slots_by_scope = {scope: np.asarray(slots, dtype=np.int64) for scope, slots in slots_by_scope.items()}
        self._masks: dict[frozenset[str], Any] = {}

    def _mask(self, scopes: Sequence[str]) -> Any:
        """A boolean per row: is its scope one of scopes. Cached: a mirror serves few scope sets."""
        wanted = frozenset(scopes)
        mask = self._masks.get(wanted)
        if mask is None:
            mask = np.zeros(len(self.rowids), dtype=bool)
            for scope in wanted:
                slots = self._slots_by_scope.get(scope)
                if slots is not None:
                    mask[slots] = True
            if len(self._masks) >= MAX_CACHED_MASKS:
                self._masks.clear()
            self._masks[wanted] = mask
        return mask

    def top(
        self, terms: list[str], top: int, *, doc_id: str | None = None, scopes: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        """(rowid, bm25 score, higher is better) of the best `top` rows matching any term, best first.

        scopes (None: all) restricts the rows ranked, before the top `top` are picked.
        """
        scores: Any = None
        for term in dict.fromkeys(terms):
            posting = self._postings.get(term)
            if posting is None:
                continue
            slots, freqs = posting
            if scores is None:
                scores = np.zeros(len(self.rowids), dtype=np.float64)
            scores[slots] += self._idf[term] * (freqs * (K1 + 1.0)) / (freqs + self._norm[slots])
        if scores is None:
            return []
        if doc_id is not None:
            candidates = self._slots_by_doc.get(doc_id)
            if candidates is None:
                return []
            if scopes is not None:
                candidates = candidates[self._mask(scopes)[candidates]]
        elif scopes is not None:
            candidates = np.flatnonzero(scores * self._mask(scopes))
        else:
            candidates = np.flatnonzero(scores)
        if len(candidates) == 0:
            return []
        picked = scores[candidates]
        if len(candidates) > top:
            # The top `top` scores, without sorting every match.
            keep = np.argpartition(-picked, top - 1)[:top]
            candidates, picked = candidates[keep], picked[keep]
        order = np.lexsort((candidates, -picked))  # best score first, then the older row, as FTS5 scans
        return [(int(self.rowids[s]), float(v)) for s, v in zip(candidates[order], picked[order], strict=True) if v > 0]


def _idf(rows: int, hits: int) -> float:
    idf = math.log((rows - hits + 0.5) / (hits + 0.5))
    return idf if idf > 0 else IDF_FLOOR
