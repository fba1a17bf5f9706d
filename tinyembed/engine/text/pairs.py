"""(query, document) pairs -> one token sequence each, the way cross-encoders read them:

    BERT    [CLS] query [SEP] document [SEP]        segment ids 0 ... 0 1 ... 1
    XLM-R   <s> query </s> </s> document </s>        one segment (type_vocab_size 1)

The template and segment ids are the tokenizer.json pair template's. The packed batch carries
token ids only, so a segment-1 token travels as `id + type_offset` (the vocabulary size): the
cross-encoder's word table holds a second copy with the segment-1 embedding folded in
(families/cross_encoder.py). Models with one token type get offset 0 and plain ids.

Truncation is the tokenizer's longest-first (what transformers' `truncation=True` does for
pairs): the longer of query and document loses tokens first.
"""

from __future__ import annotations

import numpy as np

from tinyembed.common.errors import InputError
from tinyembed.engine.checkpoints.spec import ModelSpec
from tinyembed.engine.text import textcap
from tinyembed.engine.text.tokenize import Tokenizer


class PairTokenizer(Tokenizer):
    def __init__(self, spec: ModelSpec, type_offset: int):
        super().__init__(spec)
        self.type_offset = type_offset  # added to segment-1 ids; 0 when the model has one token type

    def encode_pairs(self, query: str, documents: list[str], truncate: bool = False,
                     start: int = 0) -> list[np.ndarray]:
        """One id array per document: the query and the document as one sequence. `start`: the
        index of documents[0] in the request (for messages)."""
        cut_query = textcap.cut(query, self.char_limit)
        if cut_query is not query and not truncate:
            raise InputError(f"The query has {len(query)} characters; this model reads at most {self.char_limit}. "
                             "Shorten it, or set \"truncate\": true.", code="context_length_exceeded", param="query")
        cut_docs = [textcap.cut(d, self.char_limit) for d in documents]
        encodings = self._tok.encode_batch([(cut_query, d) for d in cut_docs], add_special_tokens=True)
        out = []
        for i, enc in enumerate(encodings):
            if not truncate and (enc.overflowing or cut_docs[i] is not documents[i]):
                raise InputError(
                    f"Document {start + i} with the query is longer than this model's maximum of {self.max_length} "
                    "tokens. Shorten it, or set \"truncate\": true.",
                    code="context_length_exceeded", param="documents")
            ids = np.asarray(enc.ids, dtype=np.int32)
            if self.type_offset:
                ids += np.asarray(enc.type_ids, dtype=np.int32) * self.type_offset
            out.append(ids)
        return out
