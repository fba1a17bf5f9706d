"""Text and token-id inputs -> token-id arrays the model runs on, specials included.

Wraps a HF `tokenizers` tokenizer.json. The tokenizer's own padding and truncation are replaced
by ours: no padding ever (the engine is padding-free) and truncation at the model's
max_seq_length only when the caller asks; otherwise an over-long input is an error that names it.
"""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from tinyembed.common.errors import InputError, ModelLoadError
from tinyembed.engine.text import textcap
from tinyembed.engine.checkpoints.spec import ModelSpec

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
        self.input_type_prompts = dict(spec.input_type_prompts)
        self.default_prompt_name = spec.default_prompt_name
        if spec.special_template is not None:
            self._enforce_template(spec.special_template, file)
        self._tok.no_padding()
        # Truncating inside the tokenizer keeps its special tokens; `overflowing` tells us that
        # it cut, which is how an over-long input is detected without encoding it twice.
        self._tok.enable_truncation(self.max_length)
        self.num_special = self._tok.num_special_tokens_to_add(is_pair=False)
        self.char_limit = self.max_length * textcap.MAX_CHARS_PER_TOKEN  # no input is read past this

    def _enforce_template(self, template: str, file) -> None:
        """Specials the model needs that tokenizer.json does not add (see engine/families):
        e.g. gte-Qwen2's appended <|endoftext|>, e5-mistral's add_eos_token. The byte-level
        post-processor, if any, is kept in front (it only trims offsets)."""
        tokens = [t for t in template.split() if t != "$A"]
        ids = {t: self._tok.token_to_id(t) for t in tokens}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ModelLoadError(f"{file}: special token(s) {missing} the model needs are not in the vocabulary")
        step = processors.TemplateProcessing(single=template, special_tokens=list(ids.items()))
        current = json.loads(self._tok.to_str()).get("post_processor") or {}
        if current.get("type") == "ByteLevel":
            step = processors.Sequence([self._tok.post_processor, step])
        self._tok.post_processor = step

    def encode(self, texts: list[str], truncate: bool = False, input_type: str | None = None,
               prompt_name: str | None = None, start: int = 0) -> list[np.ndarray]:
        """Token ids for each text. Runs in the tokenizers' Rust threads without the GIL.
        Texts are cut by characters first (engine/text/textcap.py): no input is read past
        max_length * MAX_CHARS_PER_TOKEN characters. `start`: the index of texts[0] in the
        caller's request (for messages)."""
        prompt = self.prompt(input_type, prompt_name)
        content = self.max_length - self.num_special
        encodings, cut = self._encode_capped(texts, prompt, self.max_length * textcap.FIRST_CHARS_PER_TOKEN)
        retry = [i for i, enc in enumerate(encodings) if cut[i] is not None and cut[i] <= content]
        if retry:  # sparse texts: their first cut did not settle them; read up to the hard bound
            more, more_cut = self._encode_capped([texts[i] for i in retry], prompt, self.char_limit)
            for i, enc, settled in zip(retry, more, more_cut):
                encodings[i], cut[i] = enc, settled
        out = []
        for i, enc in enumerate(encodings):
            settled = cut[i]  # None: the whole text was encoded; else its settled content tokens
            if settled is not None and settled <= content:  # not settled by max_length x 64 chars
                raise InputError(
                    f"Input {start + i} has {len(texts[i])} characters and its first {self.char_limit} do not settle "
                    f"its first {self.max_length} tokens (this model reads at most {textcap.MAX_CHARS_PER_TOKEN} "
                    f"characters per token: whitespace runs and long words count). Shorten it.",
                    code="context_length_exceeded",
                )
            if not truncate and enc.overflowing:
                if settled is None:
                    total = len(enc.ids) + sum(len(o.ids) - self.num_special for o in enc.overflowing)
                else:
                    total = settled + self.num_special
                raise InputError(
                    f"Input {start + i} has {'at least ' if settled is not None else ''}{total} tokens, more than this "
                    f"model's maximum of {self.max_length}. Shorten it, or set \"truncate\": true.",
                    code="context_length_exceeded",
                )
            out.append(np.asarray(enc.ids, dtype=np.int32))
        return out

    def _encode_capped(self, texts: list[str], prompt: str, limit: int):
        """-> (encodings of the texts cut to `limit` characters, for each text None when it was
        not cut, else how many of its leading content tokens are settled: see textcap.py)."""
        cut_texts = [textcap.cut(text, limit) for text in texts]
        encodings = self._tok.encode_batch([prompt + t for t in cut_texts], add_special_tokens=True)
        return encodings, [None if c is t else textcap.settled(enc, len(prompt) + len(c))
                           for c, t, enc in zip(cut_texts, texts, encodings)]

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

    def prompt(self, input_type: str | None, prompt_name: str | None = None) -> str:
        """The prefix for a request: a named prompt, the one `input_type` maps to, or the
        model's default_prompt_name."""
        if prompt_name is not None:
            if input_type is not None:
                raise InputError("Send either 'input_type' or 'prompt_name', not both.",
                                 code="invalid_request", param="prompt_name")
            if prompt_name not in self.prompts:
                names = ", ".join(repr(n) for n in self.prompts) or "none"
                raise InputError(f"Unknown prompt_name {prompt_name!r}; this model's prompts: {names}.",
                                 code="invalid_request", param="prompt_name")
            return self.prompts[prompt_name]
        if input_type is None:
            return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""
        if input_type not in INPUT_TYPES:
            raise InputError(f"input_type must be one of {INPUT_TYPES}", code="invalid_request", param="input_type")
        name = self.input_type_prompts.get(input_type)
        return self.prompts[name] if name else ""

    def tokens(self, ids: np.ndarray) -> list[str]:
        return [self._tok.id_to_token(int(i)) or "" for i in ids]
