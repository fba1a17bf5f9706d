"""tinyembed behind LlamaIndex's OpenAIEmbedding: a vector index and a retriever.

    tinyembed serve --port 8000 &
    pip install llama-index-core llama-index-embeddings-openai
    python examples/llamaindex_embeddings.py --tinyembed http://127.0.0.1:8000

`OpenAIEmbedding(model_name="all-MiniLM-L6-v2", api_base=".../v1")`: the model goes in
`model_name`. The `model` argument only accepts OpenAI's own model names (it raises
ValueError on any other); `model_name` is sent as is. Alternatively start tinyembed with
`--served-model-name text-embedding-3-small` and pass `model="text-embedding-3-small"`.

The index is built from nodes, not documents: splitting documents into nodes counts tokens
with tiktoken, whose encoding files LlamaIndex downloads on first use. Retrieval needs no LLM.
"""

from __future__ import annotations

import argparse
import json

from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.embeddings.openai import OpenAIEmbedding

PASSAGES = {
    "tinyembed": "tinyembed is a small server that turns text into embedding vectors.",
    "milvus": "Milvus is a vector database that stores and searches embeddings.",
    "espresso": "An espresso is brewed by forcing hot water through finely ground coffee.",
    "alps": "The Alps are the highest mountain range lying entirely in Europe.",
}
QUERIES = ["Which program computes embeddings?", "How is coffee made?"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=QUERIES)
    parser.add_argument("--tinyembed", default="http://127.0.0.1:8000", help="tinyembed's base URL")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--api-key", default="unused", help="tinyembed's key, if it was started with one")
    parser.add_argument("-k", type=int, default=2, help="results per query")
    parser.add_argument("--vectors", action="store_true", help="also print the vectors, text -> vector")
    args = parser.parse_args(argv)

    embed = OpenAIEmbedding(model_name=args.model, api_base=args.tinyembed.rstrip("/") + "/v1",
                            api_key=args.api_key, max_retries=0)
    nodes = [TextNode(id_=name, text=text) for name, text in PASSAGES.items()]
    index = VectorStoreIndex(nodes, embed_model=embed)  # embeds every node through tinyembed
    retriever = index.as_retriever(similarity_top_k=args.k)
    hits = {q: retriever.retrieve(q) for q in args.queries}  # nearest first
    result = {"results": {q: [{"id": hit.node.node_id, "text": hit.node.get_content(), "score": hit.score}
                              for hit in found] for q, found in hits.items()}}
    if args.vectors:
        stored = index.vector_store.to_dict()["embedding_dict"]  # what the index holds, node id -> vector
        result["vectors"] = {PASSAGES[node_id]: vector for node_id, vector in stored.items()}
        result["vectors"].update(zip(args.queries, map(embed.get_query_embedding, args.queries)))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
