"""The bench suite runs and writes what it promises: valid JSON that records where and how,
the tables, and numbers that come from real runs. Timings are never asserted (a bench test
that asserted speed would fail on a busy machine, and prove nothing on a quiet one).

Light tests use the tiny fixture model and only tinyembed; the ones marked slow start a real
server or need the peers (sentence-transformers, onnxruntime) and skip when those are absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny-bert-fp32")


def run_suite(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "--quick", "--model", TINY, "--out", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_quick_suite_writes_valid_json_and_tables(tmp_path):
    done = run_suite(tmp_path, "--only", "throughput,breakdown", "--contenders", "tinyembed",
                     "--lengths", "mixed,16", "--seq-len", "16", "--no-plots")
    assert done.returncode == 0, done.stderr[-2000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    env = suite["environment"]
    assert env["machine"]["cpus"] >= 1 and env["versions"]["numpy"] and len(env["loadavg"]) == 3
    assert set(suite["parts"]) == {"throughput", "breakdown"}

    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert throughput["settings"]["model"] == TINY and throughput["environment"]["versions"]["python"]
    rows = {r["corpus"]: r for r in throughput["rows"]}
    assert set(rows) == {"mixed", "16"}
    assert throughput["corpus"]["16"]["mean_tokens"] == 16.0
    for row in rows.values():
        assert row["contender"] == "tinyembed" and row["tokens_per_s"] > 0 and row["padding"] == 0
        assert len(row["times"]) == 1  # --quick: one timed pass
        assert row["min_cosine_to_tinyembed"] == pytest.approx(1.0, abs=1e-5)

    breakdown = json.loads((tmp_path / "breakdown.json").read_text())
    profile = breakdown["profiles"]["16"]
    assert breakdown["peaks"]["gflops"] > 0 and breakdown["peaks"]["gbps"] > 0
    assert profile["ops"]["matmul"]["calls"] == 3 * 2  # three per layer, two layers
    # every layer got all eight of its ops, in model.py's order
    for layer in ("layer 0", "layer 1"):
        for op in ("qkv", "attention", "attn_out", "add_ln1", "ffn_in", "gelu", "ffn_out", "add_ln2"):
            assert profile["cells"][f"{layer}|{op}"] > 0
    assert sum(r["seconds"] for r in profile["ops"].values()) <= profile["total_s"]

    markdown = (tmp_path / "results.md").read_text()
    assert "| corpus | contender" in markdown and "| ms " in markdown and "qkv" in markdown


def test_unknown_part_is_a_usage_error(tmp_path):
    done = run_suite(tmp_path, "--only", "nonsense")
    assert done.returncode == 2 and "unknown part" in done.stderr


def test_table_and_padding_helpers():
    from bench.common import table
    from bench.throughput import padded_tokens

    text = table(["name", "value"], [["a", 1], ["bb", 22]])
    assert text.splitlines()[1] == "|:-----|------:|" and text.splitlines()[3] == "| bb   |    22 |"
    # two batches of 2, each computed at its longest sequence
    assert padded_tokens([1, 4, 2, 3], batch=2) == 2 * 4 + 2 * 2
    assert padded_tokens([5] * 7, batch=3) == 35  # equal lengths: no padding


def test_tree_memory_sees_a_child_process():
    psutil = pytest.importorskip("psutil")
    from bench.common import TreeMemory

    code = "import time; b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        memory = TreeMemory(proc.pid, interval=0.02)
        proc.wait(30)
        result = memory.stop()
    finally:
        proc.kill()
    assert psutil and result["peak_rss_mb"] >= 60  # the 64 MiB it touched


@pytest.mark.slow
def test_quick_serving_spawns_a_server_and_reports_goals(tmp_path):
    pytest.importorskip("psutil")  # the bench extra: peak RSS of the server's process tree
    done = run_suite(tmp_path, "--only", "serving", "--no-plots")
    assert done.returncode == 0, done.stderr[-2000:]
    serving = json.loads((tmp_path / "serving.json").read_text())
    ours = serving["results"]["tinyembed"]
    assert ours["cold_start_s"] > 0 and ours["peak_rss_mb"] > 0 and ours["shutdown"]["exit_code"] == 0
    assert ours["min_cosine_to_engine"] == pytest.approx(1.0, abs=1e-5)
    assert [p["batch"] for p in ours["points"]] == [1, 1, 32]
    assert all(not p["errors"] for p in ours["points"])
    assert "infinity-emb" in serving["skipped"]  # not asked for: never installed behind the user's back
    assert set(serving["goals"]) == {"rss_mb", "cold_start_s"}


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("onnxruntime")
                         and importlib.util.find_spec("onnxscript")),
                    reason="needs the bench extra (sentence-transformers, onnxruntime, onnx, onnxscript)")
def test_peers_agree_with_tinyembed(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.throughput", "--quick", "--model", TINY, "--lengths", "16",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    rows = {r["contender"]: r for r in report["rows"]}
    assert set(rows) == {"tinyembed", "tinyembed-numpy", "sentence-transformers", "onnxruntime"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["min_cosine_to_tinyembed"] > 0.9999


def test_mixed_points_parse_and_compare_with_bulk_alone():
    from bench.server import add_bulk_ratios, parse_points

    assert parse_points("256x2,256x2+1x16,1x16") == [(256, 2), ((256, 2), (1, 16)), (1, 16)]
    rows = [{"batch": 256, "concurrency": 2, "texts_per_s": 100.0},
            {"batch": "256+1", "concurrency": "2+16", "mixed": True, "bulk_key": "256x2", "texts_per_s": 90.0}]
    add_bulk_ratios(rows)
    assert rows[1]["vs_bulk_alone"] == 0.9
