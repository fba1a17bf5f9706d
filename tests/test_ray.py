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
def test_embedder_two_actors_from_parquet_every_row_once_equal_to_the_engine(cluster, tmp_path, tiny):
    from tinyembed.integrations.ray import Embedder

    texts = corpus(3000)
    pq.write_table(pa.table({"id": np.arange(len(texts)), "body": texts}), tmp_path / "docs.parquet",
                   row_group_size=500)
    ds = ray.data.read_parquet(str(tmp_path / "docs.parquet"))
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": TINY_MODEL, "text_column": "body",
                                                         "output_column": "vec"},
                        concurrency=2, num_cpus=0.5, batch_size=250, batch_format="pyarrow")
    out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    assert out.schema.field("vec").type == pa.list_(pa.float32(), tiny.info.dimensions)
    ids = out.column("id").to_numpy()
    assert sorted(ids.tolist()) == list(range(len(texts)))  # every row exactly once
    got = np.stack(out.column("vec").to_numpy(zero_copy_only=False))
    expected = tiny.embed_texts([texts[i] for i in ids])
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


def embed_cli(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "tinyembed.cli", "embed", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed_blocks(manifest) -> list[int]:
    if not manifest.is_file():
        return []
    return [json.loads(line)["block"] for line in manifest.read_text().splitlines()[1:] if line.endswith("}")]


def test_distributed_embed_killed_midway_reruns_only_the_missing_blocks(cluster, tmp_path, minilm):
    texts = corpus(1500, seed=2)
    src, out = tmp_path / "docs.jsonl", tmp_path / "vectors.jsonl"
    src.write_text("".join(json.dumps({"doc": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    args = [str(src), "-o", str(out), "--id-field", "doc", "--chunk-size", "50", "--actors", "2",
            f"--ray={cluster.address_info['gcs_address']}"]
    manifest = tmp_path / "vectors.jsonl.parts" / "manifest.jsonl"

    first = embed_cli(*args)
    deadline = time.monotonic() + 120
    while len(listed_blocks(manifest)) < 2:  # let a few blocks finish, then pull the plug
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no block finished in time"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    done_before = set(listed_blocks(manifest))
    assert 2 <= len(done_before) < 30 and not out.exists()

    second = embed_cli(*args)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert f"resuming: {len(done_before)} of 30 blocks were done" in stderr
    assert f"30 blocks, {30 - len(done_before)} embedded by this run, {len(done_before)} by an earlier one" in stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(1500)]  # every row once, in order
    assert [r["line"] for r in rows] == list(range(1, 1501))
    sample = range(0, 1500, 5)  # every block, from both runs; the engine's own vectors cost time
    got = np.array([rows[i]["embedding"] for i in sample], dtype=np.float32)
    assert np.abs(got - minilm.embed_texts([texts[i] for i in sample])).max() <= 1e-5
    assert not manifest.parent.exists()  # the parts are gone once joined


def test_the_documented_example_writes_parquet_with_the_embedding_column(cluster, tmp_path, tiny):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from ray_data import embed_corpus
    finally:
        sys.path.remove(str(ROOT / "examples"))
    texts = corpus(60, seed=3)
    (tmp_path / "docs.csv").write_text("n,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    embed_corpus(str(tmp_path / "docs.csv"), str(tmp_path / "out"), model=TINY_MODEL, actors=1, batch_size=25,
                 cpus_per_actor=0.5)
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), tiny.info.dimensions)
    order = np.argsort(table.column("n").to_numpy())
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[order]
    assert np.abs(got - tiny.embed_texts(texts)).max() <= 1e-5
