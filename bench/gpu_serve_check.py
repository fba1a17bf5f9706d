"""Question: does `tinyembed serve --device cuda` answer real OpenAI-client requests with the CPU
server's vectors?

Starts one reference server on the CPU and the candidate servers (`--device cuda`: eager, then
with CUDA graphs and overlapped uploads switched on), all on 127.0.0.1 with the same model, and
sends each the same requests through the openai client: one text, a batch of mixed texts, token
ids, `dimensions`, a long text with `truncate`, 32 one-text requests from 8 threads at once
(the scheduler batches them: many small batch shapes), and an empty input that must be a 400.
Every vector must be within cosine 0.9999 of the reference (DESIGN.md's GPU bound) and the token
counts must match. Writes one JSON report; exit status 1 when any check fails.

    python -m bench.gpu_serve_check --model PATH --out serve.json             # on a GPU machine
    python -m bench.gpu_serve_check --model PATH --out serve.json --device cpu  # the CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BOUND = 0.9999
CANDIDATES = {"eager": {}, "graphs+overlap": {"TINYEMBED_CUDA_GRAPHS": "1", "TINYEMBED_CUDA_OVERLAP": "1"}}


class Server:
    """`python -m tinyembed.cli serve` on a free port; its log in a file."""

    def __init__(self, name: str, model: str, device: str, env: dict, folder: Path, timeout: float = 120):
        self.name, self.log_path = name, folder / f"{name}.log"
        self.started = time.perf_counter()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_")}
        full_env.update(env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tinyembed.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--model", f"minilm={model}", "--device", device, "--no-access-log"],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = self.url or re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log())
            if match and not self.url:
                self.url = match.group(1)
            if self.url and self._ready():
                self.ready_s = time.perf_counter() - self.started
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} server did not become ready:\n{self.log()[-3000:]}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def texts(quick: bool) -> list[str]:
    from bench.corpus import mixed_corpus

    fixtures = json.loads((ROOT / "tests" / "fixtures" / "tiny_texts.json").read_text(encoding="utf-8"))
    return fixtures[:8] + mixed_corpus(8)[:8] if quick else fixtures + mixed_corpus(64)


def ask(url: str, quick: bool = False) -> dict:
    """Every request against one server: name -> (vectors, prompt tokens)."""
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def embed(**kwargs):
        reply = client.embeddings.create(model="minilm", **kwargs)
        return np.array([d.embedding for d in reply.data], np.float32), reply.usage.prompt_tokens

    corpus = texts(quick)
    out = {
        "one text": embed(input="A short query about CUDA graphs."),
        "mixed batch": embed(input=corpus, extra_body={"truncate": True}),
        "token ids": embed(input=[[101, 7592, 2088, 102], list(range(1000, 1100))]),
        "dimensions 128": embed(input=corpus[:16], dimensions=128),
        "long text, truncate": embed(input=" ".join(corpus[:40]) * (4 if quick else 1), extra_body={"truncate": True}),
    }
    with ThreadPoolExecutor(8) as pool:  # concurrent one-text requests: batches of many shapes
        singles = list(pool.map(lambda t: embed(input=t, extra_body={"truncate": True}), corpus[:8 if quick else 32]))
    out["concurrent singles"] = (np.concatenate([v for v, _ in singles]), sum(n for _, n in singles))
    try:
        client.embeddings.create(model="minilm", input="")
        out["empty input -> 400"] = "accepted"
    except BadRequestError as exc:
        out["empty input -> 400"] = exc.status_code
    return out


def compare(reference: dict, candidate: dict) -> list[dict]:
    rows = []
    for name, want in reference.items():
        got = candidate[name]
        if not isinstance(want, tuple):
            rows.append({"request": name, "ok": got == want == 400, "got": got})
            continue
        (a, tokens_a), (b, tokens_b) = want, got
        ok = a.shape == b.shape and tokens_a == tokens_b and bool(np.isfinite(b).all())
        worst = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()) if ok else None
        rows.append({"request": name, "vectors": len(b), "tokens": tokens_b, "min_cosine": worst,
                     "ok": ok and worst >= BOUND})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (or name) every server loads")
    parser.add_argument("--device", default="cuda", help="the candidates' device (cpu for the smoke)")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--quick", action="store_true",
                        help="fewer texts and only the first candidate (the CPU smoke, where the flags change nothing)")
    args = parser.parse_args(argv)
    report = {"model": args.model, "device": args.device, "bound": BOUND, "servers": []}
    folder = Path(tempfile.mkdtemp(prefix="tinyembed-serve-check-"))
    ok, reference = True, None
    try:
        reference = Server("cpu-reference", args.model, "cpu", {}, folder)
        want = ask(reference.url, args.quick)
        candidates = list(CANDIDATES.items())[:1 if args.quick else None]
        for name, env in candidates:
            entry = {"name": name, "device": args.device, "env": env}
            server = None
            try:
                server = Server(name, args.model, args.device, env, folder)
                entry["ready_s"] = round(server.ready_s, 2)
                entry["checks"] = compare(want, ask(server.url, args.quick))
                entry["ok"] = all(c["ok"] for c in entry["checks"])
            except Exception as exc:  # a candidate that fails is reported, the others still run
                entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:])
            finally:
                if server is not None:
                    entry["exit_code"] = server.stop()
                    entry["ok"] = entry["ok"] and entry["exit_code"] == 0
                    entry["log_tail"] = server.log()[-1500:]
            ok &= entry["ok"]
            report["servers"].append(entry)
    except Exception as exc:  # the reference itself failed: nothing to compare with
        ok, report["error"] = False, f"reference: {type(exc).__name__}: {exc}"[-2000:]
    finally:
        if reference is not None:
            report["reference_exit_code"] = reference.stop()
    report["ok"] = ok and len(report["servers"]) == (1 if args.quick else len(CANDIDATES))
    Path(args.out).write_text(json.dumps(report, indent=1))
    for entry in report["servers"]:
        print(f"{entry['name']:16} {'ok' if entry['ok'] else 'FAILED'}  ready {entry.get('ready_s', '-')} s"
              + (f"  error: {entry['error']}" if "error" in entry else ""))
        for check in entry.get("checks", []):
            cosine = f"{check['min_cosine']:.6f}" if check.get("min_cosine") is not None else "-"
            print(f"    {check['request']:22} {'ok' if check['ok'] else 'FAILED':6} min cos {cosine}")
    if "error" in report:
        print(report["error"])
    print(f"serve check: {'ok' if report['ok'] else 'FAILED'} (bound {BOUND})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
