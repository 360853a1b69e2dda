"""Pure text functions shared by the knowledge index and the offline model.

Japanese has no spaces between words, and the embedded index has no dictionary, so runs of
kana/kanji become overlapping character bigrams (the CJK bigram approach of Lucene's CJK
analyzer): "復元手順" -> 復元, 元手, 手順. A query tokenized the same way finds them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal

# Kana, kanji (incl. extension A and compatibility ideographs), the iteration marks and
# Hangul: scripts written without spaces, so they are bigrammed rather than split on spaces.
_CJK = "\u3005\u3006\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_HIRAGANA = re.compile("[\u3041-\u309f]")
# Latin (with accents), Greek and Cyrillic letters and digits: space-delimited scripts.
_WORD = "0-9a-z\u00df-\u00f6\u00f8-\u024f\u0370-\u03ff\u0400-\u04ff"
_TOKEN_RE = re.compile(f"(?P<cjk>[{_CJK}]+)|(?P<word>[{_WORD}]+)")
_CJK_CHAR_RE = re.compile(f"[{_CJK}]")
_LATIN_CHAR_RE = re.compile("[A-Za-z\u00c0-\u024f]")

STOP_WORDS: frozenset[str] = frozenset(
    """a an and are as at be but by can do does for from had has have how i if in into is it its
    me my no not of on or our so than that the their them then there these they this to was we
    were what when where which who why will with you your""".split()
)

# Hiragana runs that are only particles or auxiliary endings carry no topic, so they are dropped.
JA_FUNCTION_WORDS: frozenset[str] = frozenset(
    """の は が を に で と も へ や か な ね よ から まで より です ます でした ました する します
    した して している され される ある あり いる こと もの ため について における による として
    では には とは への での との ので のは など また および ください いて おり れる られる""".split()
)
_LONGEST_FUNCTION_WORD = max(map(len, JA_FUNCTION_WORDS))


def _fold_plural(word: str) -> str:
    """Fold common English plurals ("backups" -> "backup") so a query and a passage meet."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) and not word[-2].isdigit():
        return word[:-1]
    return word


def _script_runs(run: str) -> list[str]:
    """Split a CJK run where hiragana meets kanji/katakana: particles sit at those seams."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(run)):
        if bool(_HIRAGANA.match(run[i])) != bool(_HIRAGANA.match(run[i - 1])):
            parts.append(run[start:i])
            start = i
    parts.append(run[start:])
    return parts


def _only_function_words(part: str) -> bool:
    """True when a hiragana run is a chain of particles/endings ("からの", "してください")."""
    reachable = [True] + [False] * len(part)
    for end in range(1, len(part) + 1):
        for start in range(max(0, end - _LONGEST_FUNCTION_WORD), end):
            if reachable[start] and part[start:end] in JA_FUNCTION_WORDS:
                reachable[end] = True
                break
    return reachable[-1]


def _cjk_tokens(run: str) -> list[str]:
    tokens: list[str] = []
    for part in _script_runs(run):
        if _HIRAGANA.match(part[0]) and (len(part) == 1 or _only_function_words(part)):
            continue  # a lone hiragana is a particle or an okurigana ending
        if len(part) == 1:
            tokens.append(part)
        else:
            tokens.extend(part[i : i + 2] for i in range(len(part) - 1))
    return tokens


def tokenize(text: str) -> list[str]:
    """Retrieval tokens: NFKC-folded lowercase words and digits; CJK runs as character bigrams."""
    normalized = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for cjk, word in _TOKEN_RE.findall(normalized):
        if cjk:
            tokens.extend(_cjk_tokens_cached(cjk))
        elif word not in STOP_WORDS:
            tokens.append(_fold_plural_cached(word))
    return tokens


# Words and CJK runs repeat across a corpus; analysing each distinct one once makes ingest ~2.5x faster.
_fold_plural_cached = functools.lru_cache(maxsize=65536)(_fold_plural)


@functools.lru_cache(maxsize=65536)
def _cjk_tokens_cached(run: str) -> tuple[str, ...]:
    return tuple(_cjk_tokens(run))


# --- sentences ---------------------------------------------------------------------------------

# '.', '?' or '!' (with any closing quotes/brackets) followed by whitespace ends a Latin sentence.
_LATIN_END_RE = re.compile(r"[.!?]+[\"'\u2019\u201d)\]]*(?=\s)")
# Japanese full stops end a sentence with no space after them.
_JA_END_RE = re.compile('[\u3002\uff01\uff1f\uff0e]+[\u300d\u300f\uff09)\u3011"\u201d\u2019]*')
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "no", "fig", "cf", "approx"})
_BLOCK_START_RE = re.compile(r"\s*(?:#{1,6}\s|[-*+]\s|\d+[.)]\s|>|\||```|~~~)")
_HEADING_RE = re.compile(r"\s*#{1,6}\s")


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the '.' at dot ends an abbreviation ("e.g."), an initial ("J.") or a list number, not a sentence."""
    word_start = dot
    while word_start > 0 and (text[word_start - 1].isalpha() or text[word_start - 1] == "."):
        word_start -= 1
    word = text[word_start:dot]
    if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
        return True
    line_start = text.rfind("\n", 0, dot) + 1
    return text[line_start:dot].strip().isdigit()  # "1." opening an ordered list item


def _line_break_ends_sentence(text: str, newline: int) -> bool:
    """A line break ends a sentence unless it only soft-wraps a Latin sentence onto the next line."""
    line_start = text.rfind("\n", 0, newline) + 1
    next_end = text.find("\n", newline + 1)
    next_line = text[newline + 1 : next_end if next_end >= 0 else len(text)]
    if not next_line.strip() or _HEADING_RE.match(text, line_start, newline):
        return True
    if _BLOCK_START_RE.match(next_line):
        return True
    first = next_line.lstrip()[:1]
    return not ("a" <= first <= "z")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of text, whitespace trimmed, in order."""
    cuts: set[int] = set()
    for match in _LATIN_END_RE.finditer(text):
        if text[match.start()] == "." and match.end() - match.start() == 1 and _is_abbreviation(text, match.start()):
            continue
        cuts.add(match.end())
    cuts.update(match.end() for match in _JA_END_RE.finditer(text))
    newline = text.find("\n")
    while newline >= 0:
        if _line_break_ends_sentence(text, newline):
            cuts.add(newline)
        newline = text.find("\n", newline + 1)
    cuts.add(len(text))

    spans: list[tuple[int, int]] = []
    start = 0
    for cut in sorted(cuts):
        begin, end = start, cut
        while begin < end and text[begin].isspace():
            begin += 1
        while end > begin and text[end - 1].isspace():
            end -= 1
        if end > begin:
            spans.append((begin, end))
        start = cut
    return spans


def detect_language(text: str) -> Literal["ja", "en"]:
    """ "ja" when kana/kanji outweigh Latin letters (one CJK character counts as about three letters)."""
    cjk = len(_CJK_CHAR_RE.findall(text))
    latin = len(_LATIN_CHAR_RE.findall(text))
    return "ja" if cjk and cjk * 3 >= latin else "en"


# --- snippets ----------------------------------------------------------------------------------

SNIPPET_CHARS = 200


def best_snippet(content: str, query: str, max_chars: int = SNIPPET_CHARS) -> str:
    """The sentence of content holding the most query terms, cut to about max_chars around the first one."""
    terms = list(dict.fromkeys(tokenize(query)))
    best: tuple[int, int, int] | None = None  # (terms matched, start, end)
    for start, end in split_sentences(content):
        # Substring tests on the folded sentence are much cheaper than tokenizing every sentence.
        folded = unicodedata.normalize("NFKC", content[start:end]).lower()
        matched = sum(1 for term in terms if term in folded)
        if matched and (best is None or matched > best[0]):
            best = (matched, start, end)
    if best is None:
        return _window(content, 0, 0, len(content), max_chars)
    _, start, end = best
    sentence = content[start:end].lower()
    first = min((i for i in (sentence.find(term) for term in terms) if i >= 0), default=0)
    return _window(content, start + first, start, end, max_chars)


def _window(content: str, anchor: int, start: int, end: int, max_chars: int) -> str:
    """About max_chars of content[start:end] around anchor, with an ellipsis where it was cut."""
    if end - start <= max_chars * 3 // 2:
        return content[start:end]
    lo = max(start, anchor - max_chars // 3)
    hi = min(end, lo + max_chars)
    lo = max(start, hi - max_chars)
    return ("…" if lo > start else "") + content[lo:hi].strip() + ("…" if hi < end else "")


def encodable(text: str) -> str:
    """The text, with anything UTF-8 cannot encode (lone surrogates) written as a visible escape ("\\ud800").

    For what echoes caller input back out (problem details, log lines): they must never fail to encode.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
