"""tinyembed behind LangChain's OpenAIEmbeddings.

    tinyembed serve --port 8000 &
    python examples/langchain_embeddings.py --tinyembed http://127.0.0.1:8000

`check_embedding_ctx_length=False` is required. With the default (True), OpenAIEmbeddings
tokenizes every text with tiktoken (OpenAI's tokenizer, whose encoding files it downloads on
first use), cuts it into pieces by *OpenAI's* token count and sends token-id arrays instead of
text. tinyembed takes token ids as ids of the served model's own vocabulary (a BERT WordPiece
vocabulary for MiniLM), so tiktoken's ids would be embedded as the wrong tokens, or refused as
out of range. With False, the texts are sent as text and tinyembed's tokenizer counts them
(start tinyembed with --auto-truncate to cut over-long texts instead of refusing them).
"""

from __future__ import annotations

import argparse
import json

from langchain_openai import OpenAIEmbeddings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tinyembed", default="http://127.0.0.1:8000", help="tinyembed's base URL")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--api-key", default="unused", help="tinyembed's key, if it was started with one")
    parser.add_argument("--vectors", action="store_true", help="also print the vectors, text -> vector")
    args = parser.parse_args(argv)

    embeddings = OpenAIEmbeddings(model=args.model, base_url=args.tinyembed.rstrip("/") + "/v1", api_key=args.api_key,
                                  check_embedding_ctx_length=False)
    texts, question = ["tinyembed serves text embeddings.", "Chroma stores vectors."], "Which program computes embeddings?"
    documents = embeddings.embed_documents(texts)
    query = embeddings.embed_query(question)
    scores = [sum(q * d for q, d in zip(query, doc)) for doc in documents]  # unit vectors: dot = cosine
    result = {"dimensions": len(query), "documents": len(documents), "scores": [round(s, 4) for s in scores]}
    if args.vectors:
        result["vectors"] = {**dict(zip(texts, documents)), question: query}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
