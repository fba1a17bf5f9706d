"""Question: how many tokens per second does each engine embed on this CPU, and how does that
change with the length of the inputs?

Contenders, each behind the same tiny interface (a callable that embeds the whole corpus and
returns unit vectors), each in its own subprocess (no shared caches, allocators or thread pools):

  tinyembed              the engine on its C kernels (kernels/cpu), packed padding-free batches
                         of --batch-tokens tokens
  tinyembed-numpy        the same engine on its numpy ops (TINYEMBED_CPU_KERNELS=numpy)
  sentence-transformers  PyTorch, SentenceTransformer.encode (sorts by length, batches of 32)
  onnxruntime            the same model exported by this bench (torch.onnx.export of transformers'
                         BertModel, once, cached), batches of 32 sorted by length, padded to the
                         longest in the batch; mean/CLS pooling and normalization in numpy

Corpora (the length knob, --lengths):
  mixed    texts from bench/corpus.py, 1 to 256+ tokens, truncated at the model's max length;
           text in, so every contender's time includes its own tokenization
  16, 128, 512   token-id sequences of exactly that many tokens (specials included), the same
           ids for every contender; no tokenization, no padding anywhere

Mixed lengths are where padding-free batching pays: a padded engine computes every sequence at
the length of the longest in its batch (the "computed" column counts those tokens). At a fixed
length nobody pads, and the ratio is kernels against kernels.

Each contender is warmed up on the first items of each corpus, then timed over --repeats
whole passes; the median counts. The passes are interleaved (pass 1 of every contender, then
pass 2 of every contender, ...), each contender a long-lived worker process waiting on a pipe
while the others run, so a change of load on the machine falls on all of them alike. Tokens are real tokens (specials included), counted once.
The first vectors of each corpus are compared across contenders (min cosine to tinyembed).

    python -m bench.throughput                    # table
    python -m bench.throughput --quick --json     # small, one repeat, JSON on stdout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from bench.common import MODEL, RESULTS, fmt, median, new_report, pyplot, table
from bench.corpus import fixed_length_corpus, mixed_corpus

CONTENDERS = ("tinyembed", "tinyembed-numpy", "sentence-transformers", "onnxruntime")
KERNELS = {"tinyembed": "c", "tinyembed-numpy": "numpy"}  # TINYEMBED_CPU_KERNELS per worker
PEER_BATCH = 32  # sentence-transformers' default encode batch size; used for onnxruntime too
CHECK = 16  # vectors compared across contenders per corpus
FULL = {"mixed": 1200, "16": 2048, "128": 384, "512": 96}  # items per corpus
QUICK = {"mixed": 96, "16": 64, "128": 16, "512": 8}


# -- contenders (run inside the worker subprocess) -------------------------------------------------

def _batches(items: list, size: int, key=len) -> list[tuple[list[int], list]]:
    """Sorted by length, longest first (as sentence-transformers does); -> (indices, items) per batch."""
    order = sorted(range(len(items)), key=lambda i: -key(items[i]))
    return [(order[i:i + size], [items[j] for j in order[i:i + size]]) for i in range(0, len(order), size)]


def make_tinyembed(model: str, settings: dict):
    from tinyembed.engine import load_engine

    engine = load_engine(model)

    def run(corpus):
        bt = settings["batch_tokens"]  # read per call: the `batch` command changes it
        if corpus["texts"] is not None:
            return engine.embed_sequences(engine.tokenizer.encode(corpus["texts"], truncate=True), max_batch_tokens=bt)
        return engine.embed_sequences([np.asarray(s, np.int32) for s in corpus["ids"]], max_batch_tokens=bt)

    return run


def make_sentence_transformers(model: str, settings: dict):
    import torch
    from sentence_transformers import SentenceTransformer

    from tinyembed.engine.checkpoints.registry import resolve

    st = SentenceTransformer(str(resolve(model)), device="cpu")

    def run(corpus):
        st.max_seq_length = corpus["max_length"]
        if corpus["texts"] is not None:
            return st.encode(corpus["texts"], batch_size=PEER_BATCH, normalize_embeddings=True, convert_to_numpy=True)
        # token ids in: the same modules encode() runs after tokenizing (transformer, pooling, normalize)
        out = np.empty((len(corpus["ids"]), st.get_sentence_embedding_dimension()), np.float32)
        with torch.inference_mode():
            for index, batch in _batches(corpus["ids"], PEER_BATCH):
                ids, mask = _pad(batch)
                features = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                            "token_type_ids": torch.zeros_like(torch.from_numpy(ids))}
                vectors = st(features)["sentence_embedding"]
                out[index] = torch.nn.functional.normalize(vectors, dim=1).numpy()
        return out

    return run


def make_onnxruntime(model: str, settings: dict):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tinyembed.engine.checkpoints.registry import resolve

    path = resolve(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(settings["onnx_path"], options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    pooling = _pooling_mode(path)
    pad_id = json.loads((path / "config.json").read_text()).get("pad_token_id", 0) or 0

    def run(corpus):
        if corpus["texts"] is not None:
            tokenizer.enable_truncation(corpus["max_length"])
            sequences = [e.ids for e in tokenizer.encode_batch(corpus["texts"])]
        else:
            sequences = corpus["ids"]
        out = np.empty((len(sequences), 0), np.float32)
        for index, batch in _batches(sequences, PEER_BATCH):
            ids, mask = _pad(batch, pad_id)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feed)[0]  # (B, L, H)
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask[:, :, None].astype(np.float32)
                pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            if out.shape[1] == 0:
                out = np.empty((len(sequences), pooled.shape[1]), np.float32)
            out[index] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    return run


def _pad(batch: list, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in batch)
    ids = np.full((len(batch), width), pad_id, np.int64)
    mask = np.zeros((len(batch), width), np.int64)
    for row, seq in enumerate(batch):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask


def _pooling_mode(path: Path) -> str:
    config = path / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


MAKERS = {"tinyembed": make_tinyembed, "tinyembed-numpy": make_tinyembed,
          "sentence-transformers": make_sentence_transformers, "onnxruntime": make_onnxruntime}


def worker(name: str, spec_path: str) -> None:
    """A contender in its own process, driven one command per line on stdin, so that the parent
    can interleave the contenders' passes: `warm K` (corpus K's first items), `time K` (one
    whole pass, timed), `batch K B` (the same with B tokens per batch: tinyembed only),
    `latency K N` (corpus K's first item alone, N times: the median), `quit`. Each answer is
    one JSON line on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    if name in KERNELS:
        os.environ["TINYEMBED_CPU_KERNELS"] = KERNELS[name]
    settings = spec["settings"]
    run = MAKERS[name](spec["model"], settings)
    reply = lambda obj: print(json.dumps(obj), flush=True)  # noqa: E731
    reply({"load_s": time.perf_counter() - started, "threads": _threads(name)})
    corpora = spec["corpora"]
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "quit":
            break
        arg, _, extra = arg.partition(" ")
        corpus = corpora[int(arg)]
        if command == "latency":
            one = dict(corpus, texts=None if corpus["texts"] is None else corpus["texts"][:1],
                       ids=None if corpus["ids"] is None else corpus["ids"][:1])
            times = []
            for _ in range(int(extra)):
                t0 = time.perf_counter()
                run(one)
                times.append(time.perf_counter() - t0)
            reply({"seconds": median(times), "times": times})
            continue
        if command == "batch":
            settings["batch_tokens"], default = int(extra), settings["batch_tokens"]
            t0 = time.perf_counter()
            run(corpus)
            reply({"seconds": time.perf_counter() - t0})
            settings["batch_tokens"] = default
            continue
        if command == "warm":
            items = corpus["texts"] if corpus["texts"] is not None else corpus["ids"]
            run(dict(corpus, texts=None if corpus["texts"] is None else items[:64],
                     ids=None if corpus["ids"] is None else items[:64]))
            reply({"ok": True})
        else:
            t0 = time.perf_counter()
            vectors = run(corpus)
            seconds = time.perf_counter() - t0
            reply({"seconds": seconds, "n": len(vectors), "check": np.asarray(vectors[:CHECK], np.float32).tolist()})


class Contender:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, spec_path: str):
        self.name = name
        self.stderr: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.throughput", "--worker", name, "--spec", spec_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        self.hello = self._read()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr = (self.stderr + [line.rstrip()])[-30:]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            time.sleep(0.2)  # let the drain thread catch the traceback's last line
            raise RuntimeError(_last_line("\n".join(self.stderr)) or f"exit {self.proc.returncode}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def _threads(name: str) -> dict:
    out = {}
    if name == "sentence-transformers":
        import torch

        out["torch"] = torch.get_num_threads()
    if name in KERNELS:
        from tinyembed.engine.build.cpu_threads import available_cores

        out["ops_threads"] = available_cores()
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = [i.get("num_threads") for i in threadpool_info()]
    except ImportError:
        pass
    return out


# -- the parent: corpora, ONNX export, subprocesses, report ----------------------------------------

def export_onnx(model: str, log=sys.stderr) -> tuple[str | None, str | None]:
    """-> (path to model.onnx, error). Exported once per model directory, cached in bench/results."""
    from tinyembed.engine.checkpoints.registry import resolve

    path = resolve(model)
    weights = path / "model.safetensors"
    key = hashlib.sha1(f"{path}:{weights.stat().st_size if weights.exists() else 0}".encode()).hexdigest()[:10]
    target = RESULTS / ".cache" / f"onnx-{path.name}-{key}" / "model.onnx"
    if target.is_file():
        return str(target), None
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting {path} to ONNX (once) ...", file=log, flush=True)
    done = subprocess.run([sys.executable, "-m", "bench.onnx_export", str(path), str(target)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not target.is_file():
        return None, _last_line(done.stderr) or "export failed"
    return str(target), None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def build_corpora(model: str, lengths: list[str], sizes: dict) -> tuple[list[dict], dict]:
    from tinyembed.engine import load_engine

    tokenizer = load_engine(model).tokenizer
    max_length = tokenizer.max_length
    corpora, info = [], {}
    for name in lengths:
        if name == "mixed":
            texts = mixed_corpus(sizes["mixed"])
            seqs = tokenizer.encode(texts, truncate=True)
            lens = [len(s) for s in seqs]
            limit = max_length or max(lens)
            # the texts travel to the workers: mixed_corpus() reads docstrings of whatever is
            # importable, and a worker that imported torch first would see other texts
            corpora.append({"name": "mixed", "texts": texts, "ids": None, "max_length": limit})
        else:
            n_tokens = int(name)
            # fixed_length_corpus reads 4n texts (~50 tokens each): ask for enough of them
            # that every sequence is complete, then keep the first n
            ask = max(sizes[name], -(-sizes[name] * n_tokens // 120))
            ids = [s for s in fixed_length_corpus(tokenizer, n_tokens, ask) if len(s) == n_tokens][:sizes[name]]
            if len(ids) < sizes[name]:
                raise RuntimeError(f"could not cut {sizes[name]} sequences of {n_tokens} tokens from the corpus")
            lens = [len(s) for s in ids]
            corpora.append({"name": name, "texts": None, "ids": ids, "max_length": n_tokens})
        info[name] = {"items": len(lens), "tokens": int(sum(lens)), "mean_tokens": round(float(np.mean(lens)), 1),
                      "max_tokens": int(max(lens)), "min_tokens": int(min(lens)), "lengths": lens}
    return corpora, info


def padded_tokens(lengths: list[int], batch: int = PEER_BATCH) -> int:
    """Tokens a length-sorted, padded engine computes: each batch at its longest sequence."""
    ordered = sorted(lengths, reverse=True)
    return sum(ordered[i] * len(ordered[i:i + batch]) for i in range(0, len(ordered), batch))


def run(model: str = MODEL, quick: bool = False, lengths=None, contenders=CONTENDERS, repeats: int | None = None,
        batch_tokens: int = 16384, log=sys.stderr, sweep: list[int] | None = None, latency_runs: int = 0) -> dict:
    """sweep: tokens-per-batch values for the tinyembed contenders on the mixed corpus as token
    ids; latency_runs: one 16-token text alone, that many times per round, every contender."""
    lengths = list(lengths or FULL)
    sizes = QUICK if quick else FULL
    repeats = repeats or (1 if quick else 3)
    settings = {"model": model, "lengths": lengths, "repeats": repeats, "batch_tokens": batch_tokens,
                "peer_batch_size": PEER_BATCH, "quick": quick, "sizes": {k: sizes[k] for k in lengths}}
    report = new_report("engine throughput vs peers, by length distribution", settings)
    corpora, info = build_corpora(model, lengths, sizes)
    report["corpus"] = {k: {kk: vv for kk, vv in v.items() if kk != "lengths"} for k, v in info.items()}
    extra = extra_corpora(model, sweep, latency_runs)
    corpora += extra
    worker_settings = {"repeats": repeats, "batch_tokens": batch_tokens, "onnx_path": None}
    skipped = {}
    if "onnxruntime" in contenders:
        missing = [m for m in ("onnxruntime", "onnx", "onnxscript", "torch", "transformers") if not find_spec(m)]
        if missing:
            onnx_path, error = None, f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"
        else:
            onnx_path, error = export_onnx(model, log)
        if onnx_path:
            worker_settings["onnx_path"] = onnx_path
        else:
            skipped["onnxruntime"] = error
    if "sentence-transformers" in contenders and not find_spec("sentence_transformers"):
        skipped["sentence-transformers"] = "not installed (pip install sentence-transformers)"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec_file:
        json.dump({"model": model, "settings": worker_settings, "corpora": corpora}, spec_file)
    results: dict[str, dict] = {}
    live: dict[str, Contender] = {}
    try:
        for name in contenders:
            if name in skipped:
                results[name] = {"error": f"skipped: {skipped[name]}"}
                print(f"  {name}: skipped ({skipped[name]})", file=log, flush=True)
                continue
            print(f"  {name}: loading", file=log, flush=True)
            try:
                live[name] = Contender(name, spec_file.name)
                results[name] = {"load_s": live[name].hello["load_s"], "threads": live[name].hello["threads"],
                                 "results": {}}
            except RuntimeError as exc:
                results[name] = {"error": str(exc)}
                print(f"  {name}: {exc}", file=log, flush=True)
        # Interleaved: for each corpus, every contender warms up, then pass r of every contender
        # runs before pass r+1 of any (the order rotating), so a change in the machine's load
        # during the run falls on all contenders alike instead of on whoever ran then.
        for k, corpus in enumerate(corpora):
            if corpus in extra:
                continue
            print(f"  corpus {corpus['name']}: " + ", ".join(live), file=log, flush=True)
            for name in list(live):
                try:
                    live[name].ask(f"warm {k}")
                    results[name]["results"][corpus["name"]] = {"times": []}
                except RuntimeError as exc:
                    results[name] = {"error": str(exc)}
                    live.pop(name).close()
            for r in range(repeats):
                order = list(live)
                order = order[r % len(order):] + order[:r % len(order)] if order else order
                for name in order:
                    try:
                        answer = live[name].ask(f"time {k}")
                    except RuntimeError as exc:
                        results[name] = {"error": str(exc)}
                        live.pop(name).close()
                        continue
                    entry = results[name]["results"][corpus["name"]]
                    entry["times"].append(answer["seconds"])
                    entry["check"], entry["n"] = answer["check"], answer["n"]
        for corpus in extra:
            k = corpora.index(corpus)
            report[corpus["name"]] = (batch_sweep(live, k, sweep, repeats, corpus["tokens"], log) if corpus["name"] == "sweep"
                                      else latency(live, k, latency_runs, repeats, log))
    finally:
        for contender in live.values():
            contender.close()
        os.unlink(spec_file.name)

    rows = []
    base = results.get("tinyembed", {}).get("results", {})
    for corpus in lengths:
        tokens = info[corpus]["tokens"]
        for name in contenders:
            r = results.get(name, {})
            if "results" not in r:
                rows.append({"corpus": corpus, "contender": name, "error": r.get("error", "not run")})
                continue
            cr = r["results"][corpus]
            med = median(cr["times"])
            computed = tokens if name == "tinyembed" or corpus != "mixed" else padded_tokens(info[corpus]["lengths"])
            row = {"corpus": corpus, "contender": name, "median_s": med, "times": cr["times"],
                   "tokens_per_s": tokens / med, "computed_tokens": computed, "real_tokens": tokens,
                   "padding": 1 - tokens / computed}
            if corpus in base:
                a = np.asarray(base[corpus]["check"], np.float32)
                b = np.asarray(cr["check"], np.float32)
                row["min_cosine_to_tinyembed"] = float((a * b).sum(1).min())
            rows.append(row)
    for corpus in lengths:
        ours = next((r for r in rows if r["corpus"] == corpus and r["contender"] == "tinyembed" and "tokens_per_s" in r), None)
        for row in rows:
            if row["corpus"] == corpus and "tokens_per_s" in row and ours:
                row["vs_tinyembed"] = row["tokens_per_s"] / ours["tokens_per_s"]
                row["tinyembed_speedup"] = ours["tokens_per_s"] / row["tokens_per_s"]
                # pass r of every contender ran back to back: per-round ratios cancel load changes
                row["round_speedups"] = [t / o for t, o in zip(row["times"], ours["times"])]
    report["load_s"] = {name: r.get("load_s") for name, r in results.items()}
    report["threads"] = {name: r.get("threads") for name, r in results.items()}
    report["rows"] = rows
    return report


def extra_corpora(model: str, sweep: list[int] | None, latency_runs: int) -> list[dict]:
    from tinyembed.engine import load_engine

    tokenizer = load_engine(model).tokenizer
    out = []
    if sweep:
        ids = [s.tolist() for s in tokenizer.encode(mixed_corpus(FULL["mixed"]), truncate=True)]
        out.append({"name": "sweep", "texts": None, "ids": ids, "max_length": tokenizer.max_length,
                    "tokens": sum(map(len, ids))})
    if latency_runs:
        texts = mixed_corpus(400)
        lengths = [len(s) for s in tokenizer.encode(texts, truncate=True)]
        text = min(zip(texts, lengths), key=lambda tl: abs(tl[1] - 16))[0]  # 16 tokens, specials included
        out.append({"name": "latency", "texts": [text], "ids": None, "max_length": tokenizer.max_length,
                    "tokens": lengths[texts.index(text)]})
    return out


def batch_sweep(live: dict, k: int, sizes: list[int], repeats: int, tokens: int, log) -> dict:
    """tokens/s of each tinyembed contender per batch size (rounds alternate contenders and sizes)."""
    names = [n for n in live if n in KERNELS]
    times = {n: {b: [] for b in sizes} for n in names}
    for name in names:
        live[name].ask(f"warm {k}")
    for _ in range(repeats):
        for b in sizes:
            for name in names:
                times[name][b].append(live[name].ask(f"batch {k} {b}")["seconds"])
    print(f"  batch sweep {sizes}: done", file=log, flush=True)
    out = {}
    for name in names:
        best = median(times[name][max(sizes)])
        out[name] = {str(b): {"times": times[name][b], "median_s": median(times[name][b]),
                              "tokens_per_s": tokens / median(times[name][b]),
                              "of_largest": best / median(times[name][b])} for b in sizes}
    return out


def latency(live: dict, k: int, runs: int, repeats: int, log) -> dict:
    """Median seconds to embed one 16-token text alone, per round, every contender in turn."""
    rounds = {name: [] for name in live}
    for name in live:
        live[name].ask(f"latency {k} 3")  # warm-up
    for _ in range(repeats):
        for name in live:
            rounds[name].append(live[name].ask(f"latency {k} {runs}")["seconds"])
    print("  latency: done", file=log, flush=True)
    return {name: {"rounds_ms": [1e3 * t for t in ts], "median_ms": 1e3 * median(ts)} for name, ts in rounds.items()}


def markdown(report: dict) -> str:
    out = []
    rows = []
    for r in report["rows"]:
        if "error" in r:
            rows.append([r["corpus"], r["contender"], "-", "-", "-", "-", "-", "-", r["error"][:80]])
            continue
        spread = max(r["times"]) / min(r["times"]) - 1 if len(r["times"]) > 1 else None
        rows.append([r["corpus"], r["contender"], fmt(r["tokens_per_s"]), fmt(r["median_s"], ".2f"),
                     fmt(100 * spread, ".0f") + "%" if spread is not None else "-",
                     fmt(r.get("tinyembed_speedup"), ".2f") + "x", f"{r['computed_tokens']:,}", fmt(100 * r["padding"], ".0f") + "%",
                     fmt(r.get("min_cosine_to_tinyembed"), ".6f")])
    out.append(table(["corpus", "contender", "tokens/s", "median s", "spread", "tinyembed speed-up", "computed tokens",
                      "padding", "min cos vs tinyembed"], rows, "llrrrrrrr"))
    corpus = report["corpus"]
    out.append("")
    out.append("Corpora: " + "; ".join(
        f"{k}: {v['items']} items, {v['tokens']:,} tokens (mean {v['mean_tokens']}, {v['min_tokens']}-{v['max_tokens']})"
        for k, v in corpus.items()) + f". Repeats: {report['settings']['repeats']} (median; spread = slowest pass over "
        "fastest, minus 1: a large spread means the machine was disturbed during that row).")
    return "\n".join(out)


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    corpora = list(report["corpus"])
    names = [c for c in CONTENDERS if any(r["contender"] == c and "tokens_per_s" in r for r in report["rows"])]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        values = [next((r["tokens_per_s"] for r in report["rows"] if r["corpus"] == c and r["contender"] == name
                        and "tokens_per_s" in r), 0) for c in corpora]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(corpora))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" if v else "" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(corpora)), [c if c == "mixed" else f"{c} tokens" for c in corpora])
    ax.set_ylabel("tokens / s (higher is better)")
    ax.set_title(f"Engine throughput, {report['settings']['model']}, "
                 f"{report['environment']['machine']['cpus']} CPUs")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.18)
    ax.legend(frameon=False, ncol=len(names), loc="upper center")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--quick", action="store_true", help="small corpora, one repeat")
    parser.add_argument("--lengths", default=",".join(FULL), help="mixed and/or fixed token counts: mixed,16,128,512")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="write a PNG here")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.spec)
    lengths = [x.strip() for x in args.lengths.split(",") if x.strip()]
    for x in lengths:
        if x != "mixed" and not x.isdigit():
            parser.error(f"--lengths: {x!r} is neither 'mixed' nor a token count")
    for x in (x for x in lengths if x != "mixed"):  # any fixed length works: about 48k tokens at full size, 1k quick
        FULL.setdefault(x, max(8, 49152 // int(x)))
        QUICK.setdefault(x, max(4, 1024 // int(x)))
    report = run(args.model, args.quick, lengths, [c.strip() for c in args.contenders.split(",")], args.repeats,
                 args.batch_tokens)
    if args.plot:
        plot(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
