"""tinyembed as the embedding sidecar of a Chroma server.

Chroma (`chroma run`) stores and searches the vectors; its OpenAI embedding function calls
tinyembed's /v1/embeddings for every document it indexes and every query it answers.

    tinyembed serve --port 8000 &                      # the embedding server
    chroma run --path ./chroma-data --port 8001 &       # the vector database
    CHROMA_OPENAI_API_KEY=unused python examples/chroma_sidecar.py \
        --tinyembed http://127.0.0.1:8000 --chroma-port 8001 "how do I parse command-line flags?"

The API key must be set for Chroma's embedding function to start; any value works while
tinyembed runs without --api-key (give the real key when it has one). Prints one JSON object:
the top documents for each query, nearest first.
"""

from __future__ import annotations

import argparse
import json
import os

import chromadb
from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction

CORPUS = {
    "argparse": "argparse parses command-line options, arguments and sub-commands.",
    "sqlite3": "sqlite3 is a DB-API 2.0 interface for SQLite databases stored in a single file.",
    "asyncio": "asyncio runs concurrent code with async/await: event loops, tasks and streams.",
    "json": "json encodes Python objects as JSON text and decodes JSON text back.",
    "pathlib": "pathlib represents filesystem paths as objects with methods for files and folders.",
    "hashlib": "hashlib computes secure hashes and message digests such as SHA-256.",
    "zipfile": "zipfile reads and writes ZIP archives.",
    "datetime": "datetime supplies classes for manipulating dates, times and time zones.",
}
QUERIES = ["how do I parse command-line flags?", "store rows in a database file", "compute a SHA-256 digest"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=QUERIES)
    parser.add_argument("--tinyembed", default="http://127.0.0.1:8000", help="tinyembed's base URL")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a model id tinyembed serves")
    parser.add_argument("--chroma-host", default="127.0.0.1")
    parser.add_argument("--chroma-port", type=int, default=8001)
    parser.add_argument("--collection", default="stdlib-docs")
    parser.add_argument("-k", type=int, default=2, help="results per query")
    parser.add_argument("--vectors", action="store_true", help="also print the vectors Chroma stored, text -> vector")
    args = parser.parse_args(argv)

    os.environ.setdefault("CHROMA_OPENAI_API_KEY", "unused")  # tinyembed without --api-key ignores it
    embed = OpenAIEmbeddingFunction(model_name=args.model, api_base=args.tinyembed.rstrip("/") + "/v1")
    client = chromadb.HttpClient(host=args.chroma_host, port=args.chroma_port)
    # cosine: tinyembed's vectors are unit length
    collection = client.get_or_create_collection(args.collection, embedding_function=embed,
                                                 metadata={"hnsw:space": "cosine"})
    collection.upsert(ids=list(CORPUS), documents=list(CORPUS.values()))  # embedded by tinyembed
    found = collection.query(query_texts=args.queries, n_results=args.k)
    result = {"count": collection.count(),
              "results": {q: [{"id": i, "distance": round(d, 4)} for i, d in zip(ids, dists)]
                          for q, ids, dists in zip(args.queries, found["ids"], found["distances"])}}
    if args.vectors:
        stored = collection.get(include=["documents", "embeddings"])
        result["vectors"] = {doc: [float(x) for x in vector] for doc, vector in zip(stored["documents"],
                                                                                   stored["embeddings"])}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
