"""Cut texts by characters before tokenizing, so one huge input never costs more than a model's
worth of tokenization (a 15 MB text would otherwise take seconds and gigabytes: the tokenizer
builds offsets and alignments for every character before it truncates).

When a cut text gives the same tokens. The tokenizer normalizes the text, splits it into
pre-tokens (words, punctuation, whitespace runs: `Encoding.word_ids` numbers them) and runs its
model on each pre-token alone. Text after the cut can only change what lies near the cut: the
normalization of the last few characters (a combining mark, a character the normalizer deletes
such as U+001C, an NFKC sequence) and so the last pre-token or two (a word that goes on, a
whitespace run that ends differently, a regex that looks one character ahead). Everything
before that is settled: a token of the prefix whose pre-token is neither of the last two, and
which ends at least TAIL_CHARS characters before the cut, is a token of the full text at the
same position. So:
- if the prefix holds more settled content tokens than fit, the full text is certainly
  over-long, and truncating the prefix gives exactly the ids truncating the full text gives;
- if it does not, more characters are needed. We read in two steps: first
  `max_length * FIRST_CHARS_PER_TOKEN` characters (typical text has 3-6 characters per token,
  so this almost always settles it), then at most `max_length * MAX_CHARS_PER_TOKEN`.
A text that is still not settled after MAX_CHARS_PER_TOKEN characters per token (mostly
whitespace or deleted characters, giant words, or a tokenizer without pre-tokens, where the
whole text is one) is refused, truncation on or off ("longer than N characters"): the server
does not guess. No input is read past `max_length * MAX_CHARS_PER_TOKEN` characters.
tests/test_textcap.py checks this against the tokenizer's own truncation of the full text.
"""

from __future__ import annotations

FIRST_CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 64
TAIL_CHARS = 32  # normalization near the cut reaches back at most this far (NFKC: a few characters)
TAIL_WORDS = 2  # and changes at most the last two pre-tokens


def cut(text: str, limit: int) -> str:
    """`text` itself when it fits in `limit` characters, else its first `limit` characters."""
    return text if len(text) <= limit else text[:limit]


def settled(encoding, prefix_chars: int) -> int:
    """How many leading content tokens (specials excluded) of `encoding` are certainly tokens of
    the full text at the same positions. `encoding` is the tokenizer's encoding (truncated, its
    `overflowing` holding the rest) of a string of `prefix_chars` characters that is a prefix of
    the full input."""
    pieces = [encoding, *encoding.overflowing]
    words = [w for piece in pieces for w in piece.word_ids if w is not None]
    if not words:
        return 0
    last_settled_word = max(words) - TAIL_WORDS
    end = prefix_chars - TAIL_CHARS
    count = 0
    for piece in pieces:
        for word, (_, stop) in zip(piece.word_ids, piece.offsets):
            if word is None:
                continue
            if word > last_settled_word or stop > end:
                return count
            count += 1
    return count
