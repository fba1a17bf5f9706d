"""`tinyembed embed INPUT -o OUTPUT`, run as a user runs it (a subprocess): every input and
output format, vectors equal to the engine's, bad lines, the progress bar on a terminal and
silence elsewhere, and SIGINT then the same command again resumes and finishes."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL

TEXTS = ["The quick brown fox jumps over the lazy dog.", "hello world", "vector databases index embeddings",
         "a fourth, slightly longer text about sidecars and batch jobs", "five"]


def embed_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinyembed.cli", "embed", *args]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
    return subprocess.run(embed_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)


def leftovers(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


def test_text_lines_to_npy_equal_the_engine_and_say_nothing(tmp_path, tiny):
    src, out = tmp_path / "in.txt", tmp_path / "vectors.npy"
    src.write_text("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n")  # a blank line is skipped
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL, "--chunk-size", "2")
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
    np.testing.assert_allclose(np.load(out), tiny.embed_texts(TEXTS), atol=1e-5, rtol=0)
    assert leftovers(out) == []  # no .partial, no .progress


def test_jsonl_field_and_id_to_jsonl(tmp_path, tiny):
    src, out = tmp_path / "docs.jsonl", tmp_path / "vectors.jsonl"
    src.write_text("".join(json.dumps({"doc": f"d{i}", "body": t, "other": 1}) + "\n" for i, t in enumerate(TEXTS)))
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL, "--field", "body", "--id-field", "doc",
               "--dimensions", "16")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(5)] and [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["tokens"] for r in rows] == [len(s) for s in tiny.tokenizer.encode(TEXTS)]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, tiny.embed_texts(TEXTS, dimensions=16), atol=1e-5, rtol=0)


def test_jsonl_without_the_field_is_an_error_naming_the_line(tmp_path):
    src, out = tmp_path / "docs.jsonl", tmp_path / "v.npy"
    src.write_text('{"text": "fine"}\n{"title": "no text field"}\n')
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL)
    assert done.returncode == 1 and "line 2" in done.stderr and "--field" in done.stderr
    assert not out.exists()


def batch_line(cid: str, **body) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": "text-embedding-3-small", **body}})


def test_batch_file_to_batch_output_with_bad_lines_failing_alone(tmp_path, tiny):
    src, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    src.write_text("\n".join([
        batch_line("a", input=TEXTS[0]),
        batch_line("b", input=TEXTS[1:3], dimensions=8, encoding_format="base64"),
        "{not json",
        batch_line("c", input=""),
        batch_line("d", input=TEXTS[3]),
    ]) + "\n")
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", None, "c", "d"]  # one line per request, in order
    a, b, bad, empty, d = lines
    np.testing.assert_allclose(a["response"]["body"]["data"][0]["embedding"], tiny.embed_texts([TEXTS[0]])[0],
                               atol=1e-5, rtol=0)
    b_rows = np.stack([np.frombuffer(base64.b64decode(x["embedding"]), "<f4") for x in b["response"]["body"]["data"]])
    np.testing.assert_allclose(b_rows, tiny.embed_texts(TEXTS[1:3], dimensions=8), atol=1e-5, rtol=0)
    assert bad["response"] is None and bad["error"]["code"] == "invalid_json_line"
    assert empty["response"]["status_code"] == 400 and empty["response"]["body"]["error"]["code"] == "invalid_input"
    assert d["response"]["status_code"] == 200 and a["id"] != d["id"]


def test_batch_file_to_npy_stops_at_a_bad_line(tmp_path):
    src, out = tmp_path / "requests.jsonl", tmp_path / "v.npy"
    src.write_text(batch_line("a", input="fine") + "\n" + batch_line("b", input="x", colour="red") + "\n")
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL)
    assert done.returncode == 1 and "line 2" in done.stderr and "colour" in done.stderr
    assert not out.exists()


def test_progress_bar_on_a_terminal(tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "v.npy"
    src.write_text("\n".join(f"text {i}" for i in range(300)) + "\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen(embed_cmd(str(src), "-o", str(out), "--model", TINY_MODEL, "--chunk-size", "50"),
                            stderr=slave, stdout=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(60) == 0
    text = screen.decode()
    assert "300/300" in text and "100.0%" in text and "texts/s" in text and "tok/s" in text and "ETA" in text
    assert text.count("\r") >= 6  # redrawn in place, once per chunk


@pytest.mark.slow
def test_sigint_then_the_same_command_resumes_and_finishes(tmp_path, minilm):
    texts = [f"text {i}" for i in range(10_000)]
    src, out = tmp_path / "corpus.txt", tmp_path / "corpus.npy"
    src.write_text("\n".join(texts) + "\n")
    args = (str(src), "-o", str(out), "--chunk-size", "500")
    progress = tmp_path / "corpus.npy.progress"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
    proc = subprocess.Popen(embed_cmd(*args), stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and len(progress.read_text().splitlines()) >= 1 + 4:  # 4 chunks committed
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert not out.exists()  # never a partial result under the real name
    committed = json.loads(progress.read_text().splitlines()[-1])["records"]
    assert 2000 <= committed < 10_000

    again = run(*args, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {committed} of 10000" in again.stderr
    vectors = np.load(out)
    assert vectors.shape == (10_000, 384)
    np.testing.assert_allclose(vectors, minilm.embed_texts(texts), atol=1e-5, rtol=0)
    assert leftovers(out) == []


def test_a_changed_input_starts_over(tmp_path, tiny):
    src, out = tmp_path / "in.txt", tmp_path / "v.npy"
    src.write_text("one\ntwo\n")
    partial, progress = tmp_path / "v.npy.partial", tmp_path / "v.npy.progress"
    partial.write_bytes(b"stale")
    progress.write_text(json.dumps({"fingerprint": "from another input"}) + "\n" +
                        json.dumps({"records": 1, "bytes": 5, "rows": 1}) + "\n")
    done = run(str(src), "-o", str(out), "--model", TINY_MODEL)
    assert done.returncode == 0 and "starting over" in done.stderr
    np.testing.assert_allclose(np.load(out), tiny.embed_texts(["one", "two"]), atol=1e-5, rtol=0)
