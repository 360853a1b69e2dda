"""The numpy all-MiniLM-L6-v2 encoder: unit vectors, paraphrases close, unrelated text far, batching neutral."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.hybrid import needs_hybrid

pytestmark = needs_hybrid


@pytest.fixture(scope="module")
def encode():  # type: ignore[no-untyped-def]
    from shared.adapters.local.embeddings import load_encoder

    return load_encoder().encode


def test_vectors_have_the_model_size_and_unit_norm(encode) -> None:  # type: ignore[no-untyped-def]
    vectors = encode(["How long are backups kept?", "x", "A much longer passage. " * 200])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encode([]).shape == (0, 384)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(encode) -> None:  # type: ignore[no-untyped-def]
    question, paraphrase, unrelated = encode(
        [
            "How long are backups kept?",
            "What is the retention period for backup copies?",
            "The cat sat on the mat in the sun.",
        ]
    )
    assert question @ paraphrase > 0.7  # 0.84 measured
    assert question @ unrelated < 0.2
    assert question @ paraphrase > question @ unrelated + 0.5


def test_batching_and_padding_do_not_change_a_vector(encode) -> None:  # type: ignore[no-untyped-def]
    texts = ["Restore the index from the newest backup.", "Dead-lettered steps raise an alert. " * 20, "short"]
    together = encode(texts, batch=3)
    alone = np.vstack([encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
