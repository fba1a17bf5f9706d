"""The contenders of bench/throughput.py and bench/engine.py, each behind the same tiny interface:
make_X(model, settings) -> run(corpus) -> unit vectors, run inside the worker subprocess.

  tinyembed, tinyembed-numpy, tinyembed-int8   the engine (C kernels fp32 / numpy ops / C int8)
  sentence-transformers                        PyTorch, SentenceTransformer.encode
  onnxruntime, onnxruntime-int8                the model exported to ONNX (bench/onnx_export.py),
                                               and that graph through onnxruntime.quantization's
                                               quantize_dynamic (int8 weights, dynamic int8
                                               activations: ORT's own int8 path)

settings["threads"] (from a contender name such as "onnxruntime@1") caps each contender's
compute threads; unset, each uses its own default (every core).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PEER_BATCH = 32  # sentence-transformers' default encode batch size; used for onnxruntime too

def _batches(items: list, size: int, key=len) -> list[tuple[list[int], list]]:
    """Sorted by length, longest first (as sentence-transformers does); -> (indices, items) per batch."""
    order = sorted(range(len(items)), key=lambda i: -key(items[i]))
    return [(order[i:i + size], [items[j] for j in order[i:i + size]]) for i in range(0, len(order), size)]


def make_tinyembed(model: str, settings: dict):
    from tinyembed.engine import load_engine

    precision = "int8" if settings.get("contender", "").endswith("int8") else "fp32"
    engine = load_engine(model, threads=settings.get("threads"), precision=precision)

    def run(corpus):
        bt = settings["batch_tokens"]  # read per call: the `batch` command changes it
        if corpus["texts"] is not None:
            return engine.embed_sequences(engine.tokenizer.encode(corpus["texts"], truncate=True), max_batch_tokens=bt)
        return engine.embed_sequences([np.asarray(s, np.int32) for s in corpus["ids"]], max_batch_tokens=bt)

    return run


def make_sentence_transformers(model: str, settings: dict):
    import torch
    from sentence_transformers import SentenceTransformer

    from tinyembed.engine.checkpoints.registry import resolve

    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    st = SentenceTransformer(str(resolve(model)), device="cpu")

    def run(corpus):
        st.max_seq_length = corpus["max_length"]
        if corpus["texts"] is not None:
            return st.encode(corpus["texts"], batch_size=PEER_BATCH, normalize_embeddings=True, convert_to_numpy=True)
        # token ids in: the same modules encode() runs after tokenizing (transformer, pooling, normalize)
        out = np.empty((len(corpus["ids"]), st.get_sentence_embedding_dimension()), np.float32)
        with torch.inference_mode():
            for index, batch in _batches(corpus["ids"], PEER_BATCH):
                ids, mask = _pad(batch)
                features = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                            "token_type_ids": torch.zeros_like(torch.from_numpy(ids))}
                vectors = st(features)["sentence_embedding"]
                out[index] = torch.nn.functional.normalize(vectors, dim=1).numpy()
        return out

    return run


def make_onnxruntime(model: str, settings: dict):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tinyembed.engine.checkpoints.registry import resolve

    path = resolve(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.get("threads"):
        options.intra_op_num_threads = settings["threads"]
    graph = settings["onnx_int8_path" if settings.get("contender", "").endswith("int8") else "onnx_path"]
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    pooling = _pooling_mode(path)
    pad_id = json.loads((path / "config.json").read_text()).get("pad_token_id", 0) or 0

    def run(corpus):
        if corpus["texts"] is not None:
            tokenizer.enable_truncation(corpus["max_length"])
            sequences = [e.ids for e in tokenizer.encode_batch(corpus["texts"])]
        else:
            sequences = corpus["ids"]
        out = np.empty((len(sequences), 0), np.float32)
        for index, batch in _batches(sequences, PEER_BATCH):
            ids, mask = _pad(batch, pad_id)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feed)[0]  # (B, L, H)
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask[:, :, None].astype(np.float32)
                pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            if out.shape[1] == 0:
                out = np.empty((len(sequences), pooled.shape[1]), np.float32)
            out[index] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    return run


def _pad(batch: list, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in batch)
    ids = np.full((len(batch), width), pad_id, np.int64)
    mask = np.zeros((len(batch), width), np.int64)
    for row, seq in enumerate(batch):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


def _pooling_mode(path: Path) -> str:
    config = path / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


MAKERS = {"tinyembed": make_tinyembed, "tinyembed-numpy": make_tinyembed, "tinyembed-int8": make_tinyembed,
          "sentence-transformers": make_sentence_transformers, "onnxruntime": make_onnxruntime,
          "onnxruntime-int8": make_onnxruntime}


def quantize_onnx(source: str, target: Path) -> None:
    """ORT's own int8: quantize_dynamic (int8 weights per channel, dynamic uint8 activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(source, str(target), weight_type=QuantType.QInt8, per_channel=True)
