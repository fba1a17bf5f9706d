"""tinyembed as the embedding sidecar of Milvus, through Milvus Lite.

Milvus Lite is Milvus in a local file, driven by the same `pymilvus.MilvusClient` API as a
Milvus cluster: point the client at `http://host:19530` instead of a file and this script
indexes into the cluster unchanged.

The corpus (one line summarising each Python standard-library module, read from its source
without importing it) is embedded offline through tinyembed's Batch API, so a large corpus
never competes with interactive requests; queries are embedded live through /v1/embeddings.

    tinyembed serve --port 8000 --data-dir ./tinyembed-data &   # --data-dir turns on the Batch API
    pip install pymilvus milvus-lite openai
    python examples/milvus_sidecar.py --tinyembed http://127.0.0.1:8000 --db ./stdlib.db \
        "read a compressed archive"

Prints one JSON object: the corpus size and, per query, the nearest modules with their cosine
similarity. --dump DIR also writes the vectors Milvus holds (corpus.npz: ids, vectors; queries.npz).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
from openai import OpenAI
from pymilvus import DataType, MilvusClient

QUERIES = ["read a compressed archive", "parse command-line options", "send an email message",
           "measure how long code takes to run", "random numbers", "work with dates and times"]
COLLECTION = "stdlib_modules"
BATCH_POLL_S = 0.2
BATCH_DEADLINE_S = 300.0


def stdlib_corpus(limit: int) -> dict[str, str]:
    """module name -> the first line of its docstring, from the standard library's own sources."""
    corpus = {}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("this", "antigravity"):
            continue
        source = next((p for p in (stdlib / f"{name}.py", stdlib / name / "__init__.py") if p.is_file()), None)
        if source is None:
            continue
        try:
            doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8", errors="replace")))
        except SyntaxError:
            continue
        summary = (doc or "").strip().split("\n\n")[0].replace("\n", " ").strip()
        if len(summary) >= 12:
            corpus[name] = summary
        if len(corpus) == limit:
            break
    return corpus


def embed_with_batch_api(client: OpenAI, model: str, texts: list[str]) -> np.ndarray:
    """Upload one JSONL line per text, run the batch, read the vectors back in input order."""
    lines = [json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": model, "input": text}}) for i, text in enumerate(texts)]
    upload = client.files.create(file=("corpus.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + BATCH_DEADLINE_S
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"batch {batch.id} still {batch.status} after {BATCH_DEADLINE_S}s")
        time.sleep(BATCH_POLL_S)
        batch = client.batches.retrieve(batch.id)
    if batch.status != "completed" or batch.request_counts.failed:
        raise SystemExit(f"batch {batch.id} ended {batch.status} with {batch.request_counts}")
    vectors: list = [None] * len(texts)
    for line in client.files.content(batch.output_file_id).text.splitlines():
        result = json.loads(line)
        vectors[int(result["custom_id"])] = result["response"]["body"]["data"][0]["embedding"]
    return np.asarray(vectors, dtype=np.float32)


def create_collection(milvus: MilvusClient, dimensions: int) -> None:
    if milvus.has_collection(COLLECTION):
        milvus.drop_collection(COLLECTION)
    schema = milvus.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("module", DataType.VARCHAR, max_length=64)
    schema.add_field("summary", DataType.VARCHAR, max_length=2048)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimensions)
    index = milvus.prepare_index_params()
    # FLAT: exact search (what Milvus Lite offers); on a cluster, HNSW or IVF_FLAT scale further
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    milvus.create_collection(COLLECTION, schema=schema, index_params=index)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=QUERIES)
    parser.add_argument("--tinyembed", default="http://127.0.0.1:8000", help="tinyembed's base URL (with --data-dir)")
    parser.add_argument("--api-key", default="unused", help="tinyembed's key, if it was started with one")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a model id tinyembed serves")
    parser.add_argument("--db", default="./milvus_stdlib.db", help="Milvus Lite file, or a Milvus URI")
    parser.add_argument("--corpus-size", type=int, default=200)
    parser.add_argument("-k", type=int, default=5, help="results per query")
    parser.add_argument("--dump", type=Path, help="write the vectors Milvus holds here (.npz) for checking")
    args = parser.parse_args(argv)

    client = OpenAI(base_url=args.tinyembed.rstrip("/") + "/v1", api_key=args.api_key)
    corpus = stdlib_corpus(args.corpus_size)
    names, summaries = list(corpus), list(corpus.values())
    vectors = embed_with_batch_api(client, args.model, summaries)

    milvus = MilvusClient(args.db)
    create_collection(milvus, vectors.shape[1])
    milvus.insert(COLLECTION, [{"id": i, "module": n, "summary": s, "vector": v.tolist()}
                               for i, (n, s, v) in enumerate(zip(names, summaries, vectors))])
    milvus.load_collection(COLLECTION)

    queries = client.embeddings.create(model=args.model, input=args.queries, encoding_format="float")
    query_vectors = np.asarray([d.embedding for d in sorted(queries.data, key=lambda d: d.index)], dtype=np.float32)
    found = milvus.search(COLLECTION, data=query_vectors.tolist(), limit=args.k, output_fields=["module"],
                          search_params={"metric_type": "COSINE"})
    result = {"count": milvus.get_collection_stats(COLLECTION)["row_count"],
              "results": {q: [{"id": hit["id"], "module": hit["entity"]["module"], "score": hit["distance"]}
                              for hit in hits] for q, hits in zip(args.queries, found)}}
    if args.dump:
        stored = milvus.query(COLLECTION, filter="id >= 0", output_fields=["id", "vector"], limit=len(names))
        stored.sort(key=lambda row: row["id"])
        np.savez(args.dump / "corpus.npz", ids=np.array([r["id"] for r in stored]),
                 vectors=np.asarray([r["vector"] for r in stored], dtype=np.float32), texts=np.array(summaries))
        np.savez(args.dump / "queries.npz", vectors=query_vectors, texts=np.array(args.queries))
    milvus.close()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
