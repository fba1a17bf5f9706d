"""Block runs (jobs/bulk_blocks.py) in one process: parquet in and out, the manifest, and a run
stopped after some blocks that the same command finishes without redoing them. The Ray version
of the same run is in test_ray.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL

pa = pytest.importorskip("pyarrow", reason="parquet needs pyarrow: pip install 'tinyembed[parquet]'")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = [f"text {i}: " + "word " * (i % 13) for i in range(45)]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
    return subprocess.run([sys.executable, "-m", "tinyembed.cli", "embed", *args, "--model", TINY_MODEL],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def parquet_input(path, texts=TEXTS):
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(texts))], "body": texts}), path)
    return path


def test_parquet_in_parquet_out(tmp_path, tiny):
    out = tmp_path / "vectors.parquet"
    done = run(str(parquet_input(tmp_path / "docs.parquet")), "-o", str(out), "--field", "body",
               "--id-field", "key", "--chunk-size", "10", "--dimensions", "16", "--quiet")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.column_names == ["line", "id", "tokens", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert table.column("id").to_pylist() == [f"k{i}" for i in range(45)]
    assert table.column("line").to_pylist() == list(range(1, 46))
    assert table.column("tokens").to_pylist() == [len(s) for s in tiny.tokenizer.encode(TEXTS)]
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.abs(got - tiny.embed_texts(TEXTS, dimensions=16)).max() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.parquet", "vectors.parquet"]


def test_parquet_in_npy_out_by_the_local_run(tmp_path, tiny):
    out = tmp_path / "v.npy"
    done = run(str(parquet_input(tmp_path / "docs.parquet")), "-o", str(out), "--field", "body")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert np.abs(np.load(out) - tiny.embed_texts(TEXTS)).max() <= 1e-5


@pytest.mark.parametrize("extra, message", [
    (["--field", "nope"], "no column 'nope' (the columns are key, body"),
    (["--field", "body", "--actors", "2"], "--actors goes with --ray"),
])
def test_bad_parquet_options_are_named(tmp_path, extra, message):
    done = run(str(parquet_input(tmp_path / "docs.parquet")), "-o", str(tmp_path / "o.parquet"), *extra)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_a_null_text_is_named_by_its_row(tmp_path):
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "d.parquet")
    done = run(str(tmp_path / "d.parquet"), "-o", str(tmp_path / "o.parquet"))
    assert done.returncode == 1 and "row 2: column 'text' is null" in done.stderr, done.stderr


def test_batch_input_cannot_become_parquet(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                                                  "body": {"model": "m", "input": "x"}}) + "\n")
    done = run(str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "o.parquet"))
    assert done.returncode == 1 and "name the output .jsonl" in done.stderr, done.stderr


class StopAfter:
    """An executor that embeds `blocks` blocks in this process, then is interrupted (Ctrl-C)."""

    def __init__(self, inner, blocks: int):
        self.inner, self.blocks, self.seen = inner, blocks, []

    def run(self, blocks):
        for result in self.inner.run(blocks):
            if len(self.seen) == self.blocks:
                raise KeyboardInterrupt
            self.seen.append(result.index)
            yield result


def test_a_stopped_block_run_resumes_with_only_the_missing_blocks(tmp_path, tiny, capsys):
    from tinyembed.cli import build_parser
    from tinyembed.jobs.bulk_blocks import INTERRUPTED, BlockJob, LocalBlocks
    from tinyembed.jobs.bulk_chunk import ChunkEmbedder

    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("\n".join(TEXTS) + "\n")
    args = build_parser().parse_args(["embed", str(src), "-o", str(out), "--model", TINY_MODEL, "--chunk-size", "4"])

    def executor(job, stop_after):
        return StopAfter(LocalBlocks(ChunkEmbedder(tiny, args, job.output_format, job.tag)), stop_after)

    job = BlockJob(args)
    first = executor(job, 5)
    assert job.run(first) == INTERRUPTED and not out.exists()
    manifest = tmp_path / "out.jsonl.parts" / "manifest.jsonl"
    with open(manifest, "ab") as f:
        f.write(b'{"block": 11, "rec')  # a torn last line: that block was not finished
    (tmp_path / "out.jsonl.parts" / "block-000004").write_bytes(b"cut short")  # listed, but not whole

    job = BlockJob(args)
    second = executor(job, 100)
    assert job.run(second) == 0
    assert sorted(second.seen) == [4] + list(range(5, 12))  # 12 blocks: 0-3 were done and whole
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 46))
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.abs(got - tiny.embed_texts(TEXTS)).max() <= 1e-5
    assert "resuming: 4 of 12 blocks were done" in capsys.readouterr().err
