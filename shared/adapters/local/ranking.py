"""The embedded index's ranking: FTS5's bm25() over postings held in memory, well under a millisecond.

FTS5 ranks by walking every posting of every query term through SQLite's virtual-table layer,
about 5 ms at 10,000 chunks. This mirror keeps the postings as arrays (one per term) and computes
FTS5's own bm25() over them with vector arithmetic, so it returns the ranking an FTS5 table of the
same terms would (same k1, b, IDF floor, column weights and row length), only faster.

It is a cache, never the record: the SQLite file stays the durable store (each chunk's term ids,
shared.adapters.local.term_ids), and the mirror is rebuilt from it whenever the file's write
generation (bumped by every write, from any thread or process) differs from the one it was built at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shared.adapters.local.term_ids import ID_BYTES, ID_TYPE

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
        rows: Iterable[tuple[int, str, str, bytes, bytes]],
        vocabulary: Sequence[str],
        generation: int,
        title_weight: float,
        content_weight: float,
    ) -> None:
        """rows: (rowid, doc_id, scope, title term ids, content term ids), packed as term_ids stores them;
        vocabulary: the term of each id.

        Built in bulk: the rows' packed ids are one numpy array, and numpy sums the weights per
        (term, row) and cuts the postings out of one sorted array; no Python runs per token.
        """
        self.generation = generation
        rowids: list[int] = []
        slots_by_doc: dict[str, list[int]] = {}
        slots_by_scope: dict[str, list[int]] = {}
        packed: list[bytes] = []  # per row: its title's ids, then its content's
        self.rows = sorted(rows)  # kept, so that rows appended later can be added without reading these back
        for slot, (rowid, doc_id, scope, title, content) in enumerate(self.rows):
            rowids.append(rowid)
            slots_by_doc.setdefault(doc_id, []).append(slot)
            slots_by_scope.setdefault(scope, []).append(slot)
            packed += (title, content)
        self.rowids = np.asarray(rowids, dtype=np.int64)
        rows_count = len(rowids)
        ids = np.frombuffer(b"".join(packed), dtype=ID_TYPE).astype(np.int64)
        per_column = np.fromiter(map(len, packed), dtype=np.int64, count=len(packed)) // ID_BYTES
        terms_count = len(vocabulary)
        slot_of = np.repeat(np.repeat(np.arange(rows_count, dtype=np.int64), 2), per_column)
        weight_of = np.repeat(np.tile(np.asarray([title_weight, content_weight]), rows_count), per_column)
        # Tokens grouped by term, each group in row order (a stable sort: a radix sort while the
        # vocabulary fits 16 bits); a term repeated in a row sums its weights into one posting.
        order = np.argsort(ids.astype(np.uint16) if terms_count <= 0xFFFF else ids, kind="stable")
        ids, slot_of, weight_of = ids[order], slot_of[order], weight_of[order]
        new_pair = np.ones(len(ids), dtype=bool)
        new_pair[1:] = (ids[1:] != ids[:-1]) | (slot_of[1:] != slot_of[:-1])
        starts = np.flatnonzero(new_pair)
        freqs = np.add.reduceat(weight_of, starts) if len(starts) else weight_of
        slots, posting_terms = slot_of[starts], ids[starts]
        bounds = np.searchsorted(posting_terms, np.arange(terms_count + 1)).tolist()
        lengths = per_column.reshape(-1, 2).sum(axis=1)
        avgdl = (float(lengths.sum()) / rows_count) if rows_count else 1.0
        # The per-row part of bm25()'s denominator: k1 * (1 - b + b * |D| / avgdl).
        self._norm = K1 * (1 - B + B * lengths.astype(np.float64) / (avgdl or 1.0))
        self._postings = {
            term: (slots[bounds[i] : bounds[i + 1]], freqs[bounds[i] : bounds[i + 1]])
            for i, term in enumerate(vocabulary)
            if bounds[i + 1] > bounds[i]
        }
        self._idf = {term: _idf(rows_count, len(posting[0])) for term, posting in self._postings.items()}
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
