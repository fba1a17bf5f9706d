"""Question: what does --precision int8 cost in retrieval quality, against the fp32 engine?

A shipped set of 2,000 texts (bench/data/retrieval_texts.json.gz: unique pieces of the standard
library's docstrings from bench/corpus.py, frozen so that every machine and Python version
reads the same texts) is embedded by the fp32 engine and by each lower precision. Each text is
then a query against the other 1,999 (cosine, exact search):

  cosine to fp32      per text, the cosine between its low-precision and fp32 vectors (mean, min)
  top-10 overlap      |top-10 by fp32 & top-10 by the low precision| / 10, averaged over queries
  top-1 agreement     share of queries whose nearest neighbour is the same

Goals (issue 25): int8 mean cosine >= 0.995 and top-10 overlap >= 0.95.

    python -m bench.retrieval_quality                   # table; --json for machines
    python -m bench.retrieval_quality --write-corpus    # rebuild the shipped file (maintainers)
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from bench.common import MODEL, cpu_model, table

CORPUS = Path(__file__).resolve().parent / "data" / "retrieval_texts.json.gz"
SIZE = 2000
GOALS = {"int8": {"mean_cosine": 0.995, "top10_overlap": 0.95}}


def write_corpus(path: Path = CORPUS, size: int = SIZE) -> None:
    from bench.corpus import mixed_corpus

    texts = list(dict.fromkeys(mixed_corpus(2 * size)))[:size]
    if len(texts) < size:
        raise SystemExit(f"only {len(texts)} unique texts")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(texts, indent=0).encode(), mtime=0))


def read_corpus(path: Path = CORPUS) -> list[str]:
    return json.loads(gzip.decompress(path.read_bytes()))


def neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine (vectors are unit length)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def compare(reference: np.ndarray, other: np.ndarray, k: int = 10) -> dict:
    cosines = np.einsum("ij,ij->i", reference, other)
    a, b = neighbours(reference, k), neighbours(other, k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())])
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "top10_overlap": float(overlap), "top1_agreement": float(np.mean(a[:, 0] == b[:, 0]))}


def run(model: str = MODEL, precisions=("int8",)) -> dict:
    from tinyembed.engine import load_engine

    texts = read_corpus()
    report = {"model": model, "cpu": cpu_model(), "texts": len(texts), "rows": []}
    vectors = {}
    for precision in ("fp32", *precisions):
        engine = load_engine(model, precision=precision)
        start = time.perf_counter()
        vectors[precision] = engine.embed_texts(texts)
        report["rows"].append({"precision": precision, "kernels": engine.info.kernels,
                               "embed_s": round(time.perf_counter() - start, 2)})
    for row in report["rows"][1:]:
        row.update(compare(vectors["fp32"], vectors[row["precision"]]))
        goal = GOALS.get(row["precision"], {})
        row["met"] = {name: row[name] >= bound for name, bound in goal.items()}
    return report


def markdown(report: dict) -> str:
    rows = [[r["precision"], r["kernels"], f"{r['embed_s']:.2f}", f"{r.get('mean_cosine', 1):.5f}",
             f"{r.get('min_cosine', 1):.5f}", f"{r.get('top10_overlap', 1):.4f}", f"{r.get('top1_agreement', 1):.4f}"]
            for r in report["rows"]]
    head = f"{report['model']} on {report['cpu']}: {report['texts']} texts, each a query against the others"
    return "\n".join([head, "", table(["precision", "kernels", "embed s", "mean cos to fp32", "min cos",
                                       "top-10 overlap", "top-1 same"], rows, "llrrrrr"), "",
                      f"Goals: {json.dumps(GOALS)}; met: " + json.dumps({r['precision']: r.get('met') for r in report['rows'][1:]})])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--precisions", default="int8")
    parser.add_argument("--write-corpus", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.write_corpus:
        write_corpus()
        print(f"wrote {CORPUS}")
        return
    report = run(args.model, tuple(p for p in args.precisions.split(",") if p))
    print(json.dumps(report, indent=1) if args.json else markdown(report))


if __name__ == "__main__":
    main()
