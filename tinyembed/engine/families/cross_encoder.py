"""Cross-encoders (rerankers): BertForSequenceClassification and
XLMRobertaForSequenceClassification checkpoints (ms-marco-MiniLM, bge-reranker-base/large,
bge-reranker-v2-m3), run by the encoder of families/bert.py plus the classification head:

    pair ids -> the BERT / XLM-R encoder -> hidden state of the first token (CLS / <s>)   (n, H)
             -> dense + tanh  (BERT: bert.pooler.dense; XLM-R: classifier.dense)         (n, H)
             -> linear        (BERT: classifier;        XLM-R: classifier.out_proj)      (n, labels)

The result is the raw logit per pair; the server applies the sigmoid (server/rerank.py).

Segment ids without a new op: BERT adds token-type embedding 1 to the document's tokens. The
encoder's embedding op adds token type 0 to every row, so the word table gets a second copy,
word + (type1 - type0), and segment-1 tokens use ids shifted by the vocabulary size
(text/pairs.py): LayerNorm(word[id] + pos + type0 + type1 - type0) is the transformers sum on
every backend that runs `embed` (numpy, C, CUDA), at the cost of one more copy of the table.

The head is (n, H) x (H, H) per batch: it runs on the host in numpy whatever the device.
"""

from __future__ import annotations

import numpy as np

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine.checkpoints.spec import ModelSpec, read_config
from tinyembed.engine.checkpoints.weights import _f32, load_params, read_safetensors
from tinyembed.engine.families.bert import Batch, EncoderModel

ARCHITECTURES = ("BertForSequenceClassification", "XLMRobertaForSequenceClassification",
                 "RobertaForSequenceClassification")
# head tensor names: (dense weight, dense bias, out weight, out bias), as transformers saves them
HEADS = {
    "bert": ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"),
    "xlmr": ("classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
             "classifier.out_proj.bias"),
}


def is_cross_encoder(spec: ModelSpec) -> bool:
    """True for an encoder whose config.json names a sequence-classification architecture."""
    if spec.is_decoder:
        return False
    return any(a in ARCHITECTURES for a in read_config(spec.path).get("architectures") or ())


def type_offset(spec: ModelSpec) -> int:
    """What text/pairs.py adds to segment-1 ids: the vocabulary size when there is a type 1."""
    return spec.vocab_size if spec.type_vocab_size > 1 else 0


def load_head(spec: ModelSpec) -> tuple[np.ndarray, ...]:
    """(dense_w (H, H) as (in, out), dense_b, out_w (H, labels), out_b), float32."""
    raw = read_safetensors(spec.path)
    names = HEADS[spec.family]
    found = []
    for name in names:
        # BERT heads may be stored without the `bert.` prefix (pooler.dense.*)
        tensor = raw.get(name, raw.get(name.removeprefix("bert.")))
        if tensor is None:
            raise ModelLoadError(f"{spec.path}: a {spec.family} cross-encoder needs tensor {name} (the "
                                 "classification head); is this a SequenceClassification checkpoint?")
        found.append(_f32(tensor))  # fp16 / bf16 widened
    dense_w, dense_b, out_w, out_b = found
    h = spec.hidden_size
    if dense_w.shape != (h, h) or dense_b.shape != (h,) or out_w.ndim != 2 or out_w.shape[1] != h \
            or out_b.shape != (out_w.shape[0],):
        raise ModelLoadError(f"{spec.path}: classification head shapes {[t.shape for t in found]} do not fit "
                             f"hidden_size {h}")
    if out_w.shape[0] != 1:
        raise ModelLoadError(f"{spec.path}: a reranker has one output label; this head has {out_w.shape[0]} "
                             "(a classifier, not a reranker)")
    return np.ascontiguousarray(dense_w.T), dense_b, np.ascontiguousarray(out_w.T), out_b


class _FirstTokenRows:
    """The caller's ops with one change: pooling returns each sequence's first hidden row as is
    (no normalization), which is what the classification head reads."""

    def __init__(self, ops):
        self._ops = ops

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def pool_normalize(self, hidden, cu_seqlens, mode, *args):
        return hidden[cu_seqlens[:-1]]  # (n, H) fancy indexing: numpy and CuPy alike


class CrossEncoderModel:
    def __init__(self, spec: ModelSpec, ops, params: dict[str, np.ndarray] | None = None):
        self.spec = spec
        self.ops = ops
        self.head = load_head(spec)
        self.num_labels = self.head[2].shape[1]
        params = dict(load_params(spec) if params is None else params)
        if type_offset(spec):
            shift = params["token_type"][1] - params["token_type"][0]  # (H,)
            params["word"] = np.concatenate([params["word"], params["word"] + shift])  # (2V, H)
        self.encoder = EncoderModel(spec, params, _FirstTokenRows(ops))
        self.encoder.graphs = None  # graphs capture the embedding forward; the head is not in them

    def forward(self, batch: Batch) -> np.ndarray:
        """Packed pairs -> (n, labels) float32 raw logits on the host."""
        first = self.encoder.forward(batch)  # (n, H) first-token hidden states
        dense_w, dense_b, out_w, out_b = self.head
        pooled = np.tanh(first @ dense_w + dense_b)  # (n, H)
        return (pooled @ out_w + out_b).astype(np.float32)  # (n, labels)

    def forward_on_device(self, batch: Batch) -> np.ndarray:
        return self.forward(batch)  # the head ends on the host: nothing is left on the device
