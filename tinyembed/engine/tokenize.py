"""Text and token-id inputs -> token-id arrays the model runs on, specials included.

Wraps a HF `tokenizers` tokenizer.json. The tokenizer's own padding and truncation are replaced
by ours: no padding ever (the engine is padding-free) and truncation at the model's
max_seq_length only when the caller asks; otherwise an over-long input is an error that names it.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from tinyembed.common.errors import InputError, ModelLoadError
from tinyembed.engine import textcap
from tinyembed.engine.spec import ModelSpec

INPUT_TYPES = ("query", "document")


class Tokenizer:
    def __init__(self, spec: ModelSpec):
        file = spec.path / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(f"{file}: missing (tinyembed needs the fast-tokenizer tokenizer.json)")
        try:
            self._tok = HFTokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise ModelLoadError(f"{file}: not a valid tokenizer.json ({exc})") from None
        self.max_length = spec.max_seq_length
        self.vocab_size = spec.vocab_size
        self.prompts = dict(spec.prompts)
        self._tok.no_padding()
        # Truncating inside the tokenizer keeps its special tokens; `overflowing` tells us that
        # it cut, which is how an over-long input is detected without encoding it twice.
        self._tok.enable_truncation(self.max_length)
        self.num_special = self._tok.num_special_tokens_to_add(is_pair=False)
        self.char_limit = self.max_length * textcap.MAX_CHARS_PER_TOKEN  # no input is read past this

    def encode(self, texts: list[str], truncate: bool = False, input_type: str | None = None,
               start: int = 0) -> list[np.ndarray]:
        """Token ids for each text. Runs in the tokenizers' Rust threads without the GIL.
        Texts are cut by characters first (engine/textcap.py): no input is read past
        max_length * MAX_CHARS_PER_TOKEN characters. `start`: the index of texts[0] in the
        caller's request (for messages)."""
        prompt = self.prompt(input_type)
        encodings, cut = self._encode_capped(texts, prompt, self.max_length * textcap.FIRST_CHARS_PER_TOKEN)
        retry = [i for i, enc in enumerate(encodings) if cut[i] and not enc.overflowing]
        if retry:  # sparse texts: their first cut had room left; read up to the hard bound
            more, more_cut = self._encode_capped([texts[i] for i in retry], prompt, self.char_limit)
            for i, enc, was_cut in zip(retry, more, more_cut):
                encodings[i], cut[i] = enc, was_cut
        out = []
        for i, enc in enumerate(encodings):
            if not truncate and enc.overflowing:
                total = len(enc.ids) + sum(len(o.ids) - self.num_special for o in enc.overflowing)
                raise InputError(
                    f"Input {start + i} has {'at least ' if cut[i] else ''}{total} tokens, more than this model's "
                    f"maximum of {self.max_length}. Shorten it, or set \"truncate\": true.",
                    code="context_length_exceeded",
                )
            if not truncate and cut[i]:
                raise InputError(
                    f"Input {start + i} has {len(texts[i])} characters; this model reads at most {self.char_limit} "
                    f"characters per input ({self.max_length} tokens x {textcap.MAX_CHARS_PER_TOKEN}). Shorten "
                    f"it, or set \"truncate\": true.",
                    code="context_length_exceeded",
                )
            out.append(np.asarray(enc.ids, dtype=np.int32))
        return out

    def _encode_capped(self, texts: list[str], prompt: str, limit: int):
        """-> (encodings of the texts cut to `limit` characters, which of them were cut)."""
        cut_texts = [textcap.cut(text, limit) for text in texts]
        encodings = self._tok.encode_batch([prompt + t for t in cut_texts], add_special_tokens=True)
        return encodings, [c is not t for c, t in zip(cut_texts, texts)]

    def check_ids(self, inputs: list[list[int]], truncate: bool = False, start: int = 0) -> list[np.ndarray]:
        """Token-id inputs are the model's own vocabulary, used exactly as given."""
        out = []
        for i, ids in enumerate(inputs, start):
            array = np.asarray(ids, dtype=np.int64)
            if array.size == 0:
                raise InputError(f"Input {i} is an empty list of token ids.")
            bad = (array < 0) | (array >= self.vocab_size)
            if bad.any():
                raise InputError(
                    f"Input {i} has token id {int(array[bad][0])} outside this model's "
                    f"vocabulary [0, {self.vocab_size})."
                )
            if array.size > self.max_length:
                if not truncate:
                    raise InputError(
                        f"Input {i} has {array.size} tokens, more than this model's maximum of "
                        f"{self.max_length}. Shorten it, or set \"truncate\": true.",
                        code="context_length_exceeded",
                    )
                array = array[: self.max_length]
            out.append(array.astype(np.int32))
        return out

    def prompt(self, input_type: str | None) -> str:
        if input_type is None:
            return ""
        if input_type not in INPUT_TYPES:
            raise InputError(f"input_type must be one of {INPUT_TYPES}", code="invalid_request", param="input_type")
        return self.prompts.get(input_type, "")

    def tokens(self, ids: np.ndarray) -> list[str]:
        return [self._tok.id_to_token(int(i)) or "" for i in ids]
