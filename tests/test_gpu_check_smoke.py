"""The one-call GPU device check (bench/gpu_prep.py, bench/gpu_check.sh) end to end on the CPU.

`--smoke` runs every part the device runs, with the GPU swapped out: the carry folder is built
(fp16 MiniLM in HF-cache layout, size checked against the 64 MiB limit), `pytest -m gpu` collects
every gpu-marked test in the repo (all skip here), real servers answer real openai-client
requests and are compared with a CPU server, the bench runs a tiny CPU shape, and the summary
and every file the device would send back are written under $OUT. A later session with a GPU
then runs the same script without --smoke (bench/README.md has the exact device call).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from bench.gpu_check_summary import summarize
from bench.gpu_prep import HF_ID, hf_snapshot
from tinyembed.engine.checkpoints.registry import _hf_snapshot

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"summary.json", "check.log", "pytest.log", "serve.log", "serve.json", "bench.log", "bench.json"}


def run_check(tmp: Path, devcache: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYEMBED_", "HF_"))}
    env.update(OUT=str(tmp / "out"), PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--devcache", str(devcache), *options],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    devcache = tmp_path_factory.mktemp("devcache")
    # --limit-mib 1: the folder is built, and the size check must refuse it
    prep = subprocess.run([sys.executable, "-m", "bench.gpu_prep", "--dest", str(devcache), "--no-wheels",
                           "--limit-mib", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return devcache, prep


@pytest.fixture(scope="module")
def smoke(prepared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    return tmp / "out", run_check(tmp, prepared[0])


def test_prep_builds_an_fp16_hf_cache_model_and_checks_the_size(prepared):
    devcache, prep = prepared
    assert prep.returncode == 1 and "TOO LARGE" in prep.stdout, prep.stdout + prep.stderr
    manifest = json.loads((devcache / "MANIFEST.json").read_text())
    assert manifest["fits"] is False and manifest["limit_mib"] == 1
    assert 30 < manifest["carry_bytes"] / 2**20 < manifest["total_mib"] < 64  # what the real limit sees
    assert _hf_snapshot(devcache / "hub", HF_ID) == hf_snapshot(devcache)  # resolvable by HF_HUB_CACHE
    with safe_open(str(hf_snapshot(devcache) / "model.safetensors"), "np") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and not dtypes & {"F32", "F64", "BF16"}  # every float tensor halved (ids stay I64)
    assert (hf_snapshot(devcache) / "tokenizer.json").is_file()


def test_smoke_runs_every_part_and_writes_what_the_device_sends_back(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "GPU CHECK: OK" in proc.stdout
    files = {p.name for p in out.iterdir()}
    assert files == EXPECTED
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)  # the device's rules
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["mode"] == "smoke" and not summary["problems"]
    ran = {p["part"]: p for p in summary["parts"]}
    assert {"env", "nvrtc", "pytest", "serve", "bench"} <= set(ran)
    assert all(ran[name]["exit"] == 0 and ran[name]["seconds"] > 0 for name in ran)


def test_pytest_part_collects_every_gpu_marked_test(smoke):
    out, _ = smoke
    junit = json.loads((out / "summary.json").read_text())["pytest"]
    assert junit["collected"] > 100 and junit["skipped"] == junit["collected"]  # no GPU here: all skip
    assert {"tests/test_ops_cuda.py", "tests/test_model_cuda.py", "tests/test_cuda_graphs.py"} <= set(junit["files"])
    assert "test_gpu_check_smoke.py" not in " ".join(junit["files"])  # -m gpu: CPU tests stay out


def test_serve_part_compares_real_requests_with_the_cpu_server(smoke, prepared):
    out, _ = smoke
    serve = json.loads((out / "serve.json").read_text())
    assert serve["ok"] and serve["model"] == str(hf_snapshot(prepared[0]))  # the prepared fp16 model
    (server,) = serve["servers"]
    assert server["exit_code"] == 0
    vectors = [c for c in server["checks"] if "min_cosine" in c]
    assert len(vectors) >= 6 and all(c["ok"] and c["min_cosine"] >= 0.9999 and c["vectors"] > 0 for c in vectors)
    assert any(c["request"].startswith("empty input") and c["got"] == 400 for c in server["checks"])


def test_bench_part_writes_its_json(smoke):
    out, _ = smoke
    bench = json.loads((out / "bench.json").read_text())
    assert {t["workload"] for t in bench["throughput"] if t["contender"] == "tinyembed"} >= {"len32", "mixed"}
    assert bench["latency"] and bench["latency"][0]["wall_ms"] > 0
    assert [g["met"] for g in bench["goals"]] == [None] * 4  # nothing GPU-shaped was measured


def test_a_budget_too_small_for_the_parts_fails_the_check(tmp_path):
    proc = run_check(tmp_path, tmp_path, "--budget", "5")  # no model either: serve cannot run
    assert proc.returncode == 1, proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert not summary["ok"]
    assert any("skipped (budget" in p for p in summary["problems"]) and any("serve" in p for p in summary["problems"])


def test_summary_flags_failures_and_skipped_gpu_tests():
    parts = [{"part": name, "exit": 0, "skipped": False, "seconds": 1.0, "limit_s": 60}
             for name in ("env", "nvrtc", "pytest", "serve", "bench")]
    junit = {"collected": 10, "passed": 7, "failed": 0, "errors": 0, "skipped": 3,
             "files": {f"tests/{f.name}": {} for f in Path(__file__).parent.glob("test_*cuda*.py")}}  # all marked
    assert summarize(parts, junit, {"ok": True, "servers": []}, None, "smoke")["ok"]
    on_gpu = summarize(parts, junit, {"ok": True, "servers": []}, None, "gpu")
    assert not on_gpu["ok"] and "3 gpu tests skipped on a GPU machine" in on_gpu["problems"][0]
    parts[3]["exit"] = 1
    assert "serve: exit 1" in summarize(parts, junit, {"ok": False, "servers": []}, None, "smoke")["problems"]
    assert "bench: did not run" in summarize(parts[:4], junit, None, None, "smoke")["problems"]


def test_on_the_device_only_missing_or_older_packages_are_installed(tmp_path, capsys):
    from bench.gpu_prep import needed_wheels

    names = ["numpy-0.1-py3-none-any.whl", "numpy-999.0-py3-none-any.whl", "tinyembed_absent_pkg-1.0-py3-none-any.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [w.name for w in needed_wheels(tmp_path)] == names[1:]  # numpy 0.1 < the installed one: skipped

    from bench.gpu_prep import main

    for name in names[1:]:
        (tmp_path / name).unlink()
    assert main(["--needed-wheels", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""  # nothing to install: not even an empty line for the shell
