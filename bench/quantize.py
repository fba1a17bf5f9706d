"""What does output_dtype cost in retrieval quality? Bytes per vector and recall@10 of int8 and
binary search against float search, on a retrieval set built from the standard library's
docstrings (bench/corpus.py): the documents are every piece of one half of the modules'
docstrings, the queries the first sentences of the other half's (no query is a document).

Each row searches the same documents with the same queries; recall@10 = the share of float
search's top 10 (cosine on float32) that the quantized search's top 10 also holds:

    float                 float32 dot product (the reference: recall 1)
    int8                  int8 . int8 dot product, ranges from tinyembed's shipped calibration
    int8 (self-ranges)    the same with ranges from the documents themselves (quantize_embeddings'
                          default when it is given no calibration set)
    binary                Hamming distance of the packed sign bits
    binary + rescore      the 40 best by Hamming, rescored by float query . (+-1 bits)

The peer column: sentence-transformers' quantize_embeddings on the same float vectors with the
same ranges must give the same bytes (binary: bit for bit; int8: within one step).

    flock /work/bench.lock python -m bench.quantize --docs 2000 --queries 200 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench import common
from bench.corpus import docstrings

K, RESCORE = 10, 40


def retrieval_set(docs: int, queries: int) -> tuple[list[str], list[str]]:
    texts = docstrings()
    half_a, half_b = texts[0::2], texts[1::2]
    documents = []
    for doc in half_a:
        documents.append(doc)
        documents += [p.strip() for p in doc.split("\n\n")[1:3] if len(p.strip()) > 12]
    questions = [d.split(". ")[0].split("\n")[0].strip() for d in half_b]
    questions = [q for q in dict.fromkeys(questions) if 12 < len(q) < 200]
    return documents[:docs], questions[:queries]


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tinyembed.engine import load_engine
    from tinyembed.engine.quantize import quantize

    engine = load_engine(args.model)
    documents, questions = retrieval_set(args.docs, args.queries)
    started = time.monotonic()
    d = engine.embed_texts(documents)  # (N, H) float32 unit vectors
    q = engine.embed_texts(questions)
    embed_s = time.monotonic() - started
    truth = topk(q @ d.T, K)

    rows = {}
    rows["float"] = (d.shape[1] * 4, 1.0)
    for name, ranges in (("int8", engine.calibration.ranges()),
                         ("int8 (self-ranges)", np.stack([d.min(axis=0), d.max(axis=0)]))):
        di = quantize(d, "int8", ranges).astype(np.int32)
        qi = quantize(q, "int8", ranges).astype(np.int32)
        rows[name] = (d.shape[1], recall(topk(qi @ di.T, K), truth))
    engine_bits = engine.quantize(d, "ubinary")
    bits = np.unpackbits(engine_bits, axis=1)[:, :d.shape[1]].astype(np.int32)
    qbits = np.unpackbits(engine.quantize(q, "ubinary"), axis=1)[:, :d.shape[1]].astype(np.int32)
    hamming = qbits @ (1 - bits).T + (1 - qbits) @ bits.T  # (Q, N) differing bits
    by_hamming = topk(-hamming, K)
    rows["binary"] = (engine_bits.shape[1], recall(by_hamming, truth))
    candidates = topk(-hamming, RESCORE)
    signs = 2.0 * bits - 1.0
    rescored = np.stack([c[np.argsort(-(signs[c] @ qv), kind="stable")[:K]] for c, qv in zip(candidates, q)])
    rows["binary + rescore"] = (engine_bits.shape[1], recall(rescored, truth))

    peer = peer_agreement(d, engine)
    report = common.new_report("quantize", vars(args))
    report.update({"documents": len(documents), "queries": len(questions), "embed_s": round(embed_s, 1),
                   "rows": {name: {"bytes_per_vector": b, "recall_at_10": r} for name, (b, r) in rows.items()},
                   "sentence_transformers": peer})
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=float)
        return
    print(f"# output_dtype: bytes per vector and recall@{K} against float ({args.model}, {len(documents)} "
          f"documents, {len(questions)} queries)\n")
    print(common.describe_environment(report["environment"]) + "\n")
    print(common.table(["output", "bytes/vector", "x smaller", f"recall@{K}"],
                       [[name, b, f"{rows['float'][0] / b:.0f}", f"{r:.3f}"] for name, (b, r) in rows.items()]))
    print(f"\nsentence-transformers quantize_embeddings on the same vectors: {peer}")


def peer_agreement(d: np.ndarray, engine) -> dict:
    """The peer's bytes for the same vectors and ranges (None when sentence-transformers is absent)."""
    try:
        from sentence_transformers.quantization import quantize_embeddings
    except ImportError:
        return {"available": False}
    ranges = engine.calibration.ranges()
    ours_int8, theirs_int8 = engine.quantize(d, "int8"), quantize_embeddings(d, "int8", ranges=ranges)
    steps = np.abs(ours_int8.astype(int) - theirs_int8.astype(int))
    return {"available": True,
            "binary_identical": bool(np.array_equal(engine.quantize(d, "binary"), quantize_embeddings(d, "binary"))),
            "int8_max_step": int(steps.max()), "int8_identical_share": round(float((steps == 0).mean()), 5)}


if __name__ == "__main__":
    main()
