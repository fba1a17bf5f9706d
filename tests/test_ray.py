"""Ray Data: the Embedder on a real local Ray cluster (2 CPUs, one cluster for the module), and
`tinyembed embed --ray` killed midway and rerun. Skipped only when ray is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'tinyembed[ray]'")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

WORDS = ("vector", "database", "sidecar", "embedding", "ray", "cluster", "parquet", "actor", "token", "batch",
         "kubernetes", "replica", "queue", "latency", "shard")


def corpus(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 3..24 words."""
    rng = np.random.default_rng(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS, rng.integers(3, 25))) for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; workers import this worktree's tinyembed."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    context = ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                       log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield context
    finally:
        ray.shutdown()


# Each actor asks for half a CPU: two actors holding both CPUs would leave none for the read
# tasks, and the pipeline would wait forever (docs/ray.md says so too).
def test_embedder_two_actors_from_parquet_every_row_once_equal_to_the_engine(cluster, tmp_path, minilm):
    from tinyembed.integrations.ray import Embedder

    texts = corpus(3000)
    pq.write_table(pa.table({"id": np.arange(len(texts)), "body": texts}), tmp_path / "docs.parquet",
                   row_group_size=500)
    ds = ray.data.read_parquet(str(tmp_path / "docs.parquet"))
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": "all-MiniLM-L6-v2", "text_column": "body",
                                                         "output_column": "vec"},
                        concurrency=2, num_cpus=0.5, batch_size=250, batch_format="pyarrow")
    out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    assert out.schema.field("vec").type == pa.list_(pa.float32(), minilm.info.dimensions)
    ids = out.column("id").to_numpy()
    assert sorted(ids.tolist()) == list(range(len(texts)))  # every row exactly once
    got = np.stack(out.column("vec").to_numpy(zero_copy_only=False))
    expected = minilm.embed_texts([texts[i] for i in ids])
    assert np.abs(got - expected).max() <= 1e-5
    assert out.column("body").to_pylist() == [texts[i] for i in ids]  # the other columns ride along


@pytest.mark.parametrize("source", ["jsonl", "csv"])
def test_embedder_on_jsonl_and_csv_with_dimensions_and_numpy_batches(cluster, tmp_path, tiny, source):
    from tinyembed.integrations.ray import Embedder

    texts = corpus(40, seed=1)
    if source == "jsonl":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"k": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        ds = ray.data.read_json(str(tmp_path / "d.jsonl"))
    else:
        (tmp_path / "d.csv").write_text("k,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
        ds = ray.data.read_csv(str(tmp_path / "d.csv"))
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": TINY_MODEL, "dimensions": 8},
                        concurrency=1, num_cpus=0.5, batch_size=16)  # Ray's default (numpy) batches
    out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    order = np.argsort(out.column("k").to_numpy())
    assert out.column("k").to_numpy()[order].tolist() == list(range(40))
    got = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))[order]
    assert np.abs(got - tiny.embed_texts(texts, dimensions=8)).max() <= 1e-5


def test_embedder_names_a_missing_column_and_a_bad_row(tiny):
    from tinyembed.integrations.ray import Embedder

    embedder = Embedder(TINY_MODEL, device="cpu")
    with pytest.raises(ValueError, match="no column 'text'.*'body'"):
        embedder({"body": np.array(["a"], dtype=object)})
    with pytest.raises(ValueError, match="row 1 of this batch is NoneType"):
        embedder(pa.table({"text": ["a", None]}))
    with pytest.raises(ValueError, match="dimensions must be 1.."):
        Embedder(TINY_MODEL, device="cpu", dimensions=10_000)
