"""Cut texts by characters before tokenizing, so one huge input never costs more than a model's
worth of tokenization (a 15 MB text would otherwise take seconds and gigabytes: the tokenizer
builds offsets and alignments for every character before it truncates).

Why a cut text gives the same tokens. Every pre-tokenizer we load (BERT's whitespace+punctuation
split, SentencePiece's Metaspace, byte-level BPE's regex) splits at whitespace, so the tokens of
`text[:k]`, cut just before a whitespace character, are a prefix of the tokens of `text`. Hence:
- if the cut prefix already holds more than `max_length` tokens, the full text is certainly
  over-long, and truncating the prefix gives exactly the ids truncating the full text gives;
- if it does not, more characters are needed. We read in two steps: first
  `max_length * FIRST_CHARS_PER_TOKEN` characters (typical text has 3-6 characters per token,
  so this almost always settles it), then at most `max_length * MAX_CHARS_PER_TOKEN`.
A text that still has room for tokens after MAX_CHARS_PER_TOKEN characters per token (e.g.
mostly whitespace, or one giant word) is refused with truncate off ("longer than N characters")
and, with truncate on, embedded from its first N characters. That is the documented bound: no
input is read past `max_length * MAX_CHARS_PER_TOKEN` characters.
"""

from __future__ import annotations

FIRST_CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 64
WHITESPACE_LOOKBACK = 256  # how far back a cut looks for whitespace; a hard cut beyond that


def cut(text: str, limit: int) -> str:
    """`text` itself when it fits in `limit` characters, else a prefix that ends just before a
    whitespace character (or exactly at `limit` when the last WHITESPACE_LOOKBACK have none)."""
    if len(text) <= limit:
        return text
    start = max(0, limit - WHITESPACE_LOOKBACK)
    window = text[start:limit + 1]  # +1: a cut right before a space at `limit` is exact
    for i in range(len(window) - 1, 0, -1):
        if window[i].isspace():
            return text[:start + i]
    return text[:limit]
