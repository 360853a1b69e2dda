"""Fixtures of the domain unit tests: a small embedded knowledge index with known passages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local.search import LocalKnowledgeIndex
from tests.unit.library import CHUNKS


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LocalKnowledgeIndex]:
    """The embedded SQLite index holding CHUNKS."""
    knowledge = LocalKnowledgeIndex(tmp_path / "search.sqlite3")
    knowledge.upsert(CHUNKS)
    yield knowledge
    knowledge.close()
