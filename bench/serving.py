"""Question: served over HTTP, how do tinyembed and infinity-emb compare on the same model and
machine: cold start, memory, throughput and latency as concurrency grows?

Contenders (each a server process started by this script, on 127.0.0.1, the same model
directory, the same texts):

  tinyembed      `python -m tinyembed.cli serve --auto-truncate --no-access-log`; ready = GET /ready 200
  infinity-emb   0.0.78 in its own venv (bench/infinity_env.py; created by --peers), its
                 defaults (torch engine, batch size 32), HF_HUB_OFFLINE=1; ready = GET /health 200

For each contender:
  cold start   seconds from just before the process is spawned to the first 200 from its
               ready route (polled every 10 ms); --starts times, median (the page cache is
               warm after the first start; the first start is reported too)
  memory       RSS of the server process and all its children, sampled every 50 ms from spawn
               to the end of the load (peak), plus RSS when it first turned ready
  load         bench/server.py's closed-loop client (keep-alive connections, base64 responses)
               over a sweep of points BATCHxCONCURRENCY (texts per request x connections):
               texts/s, tokens/s, p50/p99 latency; the client shares the machine's CPUs
  agreement    8 texts embedded by the server vs tinyembed's engine in this process (min cosine)

The servers are up together during the load, and the points are interleaved (each point on
every server before the next point, the order rotating), so that a change of load on the
machine falls on all of them alike; the idle server's own CPU use during the other's points is
recorded (idle_cpu_s_of_others in the JSON).

texts/s is the number to compare across servers (the same texts, in the same order); tokens
are each server's own usage count.

    python -m bench.serving                       # tinyembed only
    python -m bench.serving --peers               # + infinity-emb (installs its venv once)
    python -m bench.serving --quick --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench import infinity_env
from bench.common import MODEL, TreeMemory, fmt, median, new_report, pyplot, table
from bench.corpus import mixed_corpus

FULL_POINTS = "1x1,1x2,1x4,1x8,1x16,1x32,32x1,32x4"
QUICK_POINTS = "1x1,1x16,32x1"
GOALS = {"rss_mb": 300.0, "cold_start_s": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Contender:
    name = ""
    ready_path = "/ready"

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def versions(self) -> dict:
        return {}


class TinyEmbed(Contender):
    name = "tinyembed"
    ready_path = "/ready"

    def __init__(self, model: str, extra_args: list[str] = (), extra_env: dict | None = None):
        self.model = model
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "tinyembed.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--model", f"{MODEL}={self.model}" if self.model != MODEL else MODEL, "--auto-truncate",
                "--no-access-log", "--log-level", "warning", *self.extra_args]

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(self.extra_env)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def versions(self) -> dict:
        from bench.common import version

        return {"tinyembed": version("tinyembed") or "source checkout"}


class Infinity(Contender):
    name = "infinity-emb"
    ready_path = "/health"

    def __init__(self, model: str):
        from tinyembed.engine.checkpoints.registry import resolve

        self.model_dir = str(resolve(model))

    def command(self, port: int) -> list[str]:
        return [str(infinity_env.executable()), "v2", "--model-id", self.model_dir, "--served-model-name", MODEL,
                "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1", "--device", "cpu",
                "--engine", "torch", "--log-level", "warning"]

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
                   INFINITY_ANONYMOUS_USAGE_STATS="0")
        env.pop("PYTHONPATH", None)
        return env

    def versions(self) -> dict:
        return infinity_env.versions()


class Server:
    """A spawned server: cold-start time, memory sampling from the moment of spawn."""

    def __init__(self, contender: Contender, timeout: float = 180.0):
        self.contender = contender
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.stderr_tail: list[str] = []
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(contender.command(self.port), env=contender.env(), stdout=self.log,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.memory = TreeMemory(self.proc.pid)
        threading.Thread(target=self._drain, daemon=True).start()
        self.cold_start_s = self._wait_ready(t0, timeout)
        self.ready_rss_mb = round(self.memory.sample() / 2**20, 1)

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

    def _wait_ready(self, t0: float, timeout: float) -> float:
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.contender.name} exited {self.proc.returncode}: "
                                   + " | ".join(self.stderr_tail[-3:]))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.contender.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.contender.name} not ready after {timeout:.0f} s")

    def embed(self, texts: list[str]) -> np.ndarray:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = json.dumps({"model": MODEL, "input": texts, "encoding_format": "float"})
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        conn.close()
        data = sorted(reply["data"], key=lambda d: d["index"])
        return np.asarray([d["embedding"] for d in data], np.float32), reply.get("usage", {}).get("total_tokens")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's process tree so far."""
        import psutil

        total = 0.0
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> dict:
        memory = self.memory.stop()
        t0 = time.perf_counter()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(10)
        self.log.close()
        return dict(memory, exit_code=code, stop_s=round(time.perf_counter() - t0, 2))


def start(contender: Contender, starts: int, texts: list[str], reference: np.ndarray, log=sys.stderr):
    """Cold-start the server `starts` times; the last one stays up for the load. -> (result, server)."""
    result = {"command": contender.command(0), "versions": contender.versions(), "starts": [], "points": []}
    server = None
    for k in range(starts):
        server = Server(contender)
        result["starts"].append({"cold_start_s": round(server.cold_start_s, 3), "ready_rss_mb": server.ready_rss_mb})
        print(f"    start {k + 1}: ready in {server.cold_start_s:.2f} s, {server.ready_rss_mb:.0f} MB", file=log, flush=True)
        if k < starts - 1:
            server.stop()
    try:
        vectors, usage = server.embed(texts[:8])
    except (OSError, ValueError, KeyError) as exc:
        server.stop()
        raise RuntimeError(f"{contender.name}: first request failed: {exc}") from None
    result["min_cosine_to_engine"] = float((vectors * reference).sum(1).min())
    result["usage_tokens_first8"] = usage
    cold = [s["cold_start_s"] for s in result["starts"]]
    result["cold_start_s"] = median(cold)
    result["first_cold_start_s"] = cold[0]
    result["ready_rss_mb"] = result["starts"][-1]["ready_rss_mb"]
    return result, server


def load(servers: dict, results: dict, texts: list[str], points: list[tuple[int, int]], duration: float,
         warmup: float, log=sys.stderr) -> None:
    """Every point on every server, interleaved (point 1 on each server, then point 2 ...; the
    order rotates), so that a change of load on the machine falls on all servers alike. The
    servers not under load sit idle meanwhile; the CPU they use anyway is recorded."""
    from bench.server import run_point

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    for i, (batch, concurrency) in enumerate(points):
        names = list(servers)
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            server = servers[name]
            idle_before = {n: s.cpu_seconds() for n, s in servers.items() if n != name}
            row = runner(run_point(server.url, MODEL, None, texts, batch, concurrency, duration, warmup, "base64"))
            row["rss_mb_after"] = round(server.memory.sample() / 2**20, 1)
            row["idle_cpu_s_of_others"] = {n: round(servers[n].cpu_seconds() - t, 2) for n, t in idle_before.items()}
            print(f"    {name} {batch}x{concurrency}: {row['texts_per_s']:.1f} texts/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p99 {row['p99_ms']:.0f} ms", file=log, flush=True)
            results[name]["points"].append(row)


def run(model: str = MODEL, peers: bool = False, quick: bool = False, points: str | None = None,
        duration: float | None = None, warmup: float | None = None, starts: int | None = None,
        texts_count: int = 1200, offline_tokens_per_s: float | None = None, server_args: list[str] = (),
        server_env: dict | None = None, log=sys.stderr) -> dict:
    from bench.server import parse_points
    from tinyembed.engine import load_engine

    points = parse_points(points or (QUICK_POINTS if quick else FULL_POINTS))
    duration = duration or (4.0 if quick else 10.0)
    warmup = warmup if warmup is not None else (1.0 if quick else 2.0)
    starts = starts or (1 if quick else 3)
    texts = mixed_corpus(texts_count)
    settings = {"model": model, "points": [f"{b}x{c}" for b, c in points], "duration_s": duration, "warmup_s": warmup,
                "starts": starts, "texts": len(texts), "encoding": "base64", "peers": peers, "quick": quick,
                "tinyembed_args": list(server_args), "tinyembed_env": dict(server_env or {})}
    report = new_report("HTTP serving: tinyembed vs infinity-emb, same model, same machine", settings)
    engine = load_engine(model)
    lengths = [len(s) for s in engine.tokenizer.encode(texts, truncate=True)]
    report["corpus"] = {"texts": len(texts), "tokens": int(sum(lengths)), "mean_tokens": round(float(np.mean(lengths)), 1),
                        "max_tokens": int(max(lengths)), "source": "bench/corpus.py mixed_corpus"}
    reference = engine.embed_texts(texts[:8])
    report["reference_usage_tokens_first8"] = int(sum(lengths[:8]))
    del engine
    contenders: list[Contender] = [TinyEmbed(model, server_args, server_env)]
    report["skipped"] = {}
    if peers:
        try:
            infinity_env.ensure(log)
            contenders.append(Infinity(model))
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            report["skipped"]["infinity-emb"] = f"install failed: {exc}"
    else:
        report["skipped"]["infinity-emb"] = "not asked (pass --peers to install and run it)"
    report["results"] = {}
    servers: dict[str, Server] = {}
    try:
        for contender in contenders:
            print(f"  {contender.name}: cold starts", file=log, flush=True)
            try:
                report["results"][contender.name], servers[contender.name] = start(contender, starts, texts, reference, log)
            except RuntimeError as exc:
                report["results"][contender.name] = {"error": str(exc)}
                print(f"  {contender.name}: {exc}", file=log, flush=True)
        print(f"  load, interleaved: {', '.join(servers)}", file=log, flush=True)
        load(servers, report["results"], texts, points, duration, warmup, log)
    finally:
        for name, server in servers.items():
            r = report["results"][name]
            r["shutdown"] = server.stop()
            r["peak_rss_mb"] = r["shutdown"]["peak_rss_mb"]
    report["offline_tokens_per_s"] = offline_tokens_per_s
    ours = report["results"].get("tinyembed", {})
    report["goals"] = {
        "rss_mb": {"goal": GOALS["rss_mb"], "tinyembed": ours.get("peak_rss_mb"),
                   "met": ours.get("peak_rss_mb") is not None and ours["peak_rss_mb"] <= GOALS["rss_mb"]},
        "cold_start_s": {"goal": GOALS["cold_start_s"], "tinyembed": ours.get("cold_start_s"),
                         "met": ours.get("cold_start_s") is not None and ours["cold_start_s"] <= GOALS["cold_start_s"]},
    }
    for name, r in report["results"].items():
        if name != "tinyembed" and "peak_rss_mb" in r:
            report["goals"]["rss_mb"][name] = r["peak_rss_mb"]
            report["goals"]["cold_start_s"][name] = r["cold_start_s"]
    return report


def markdown(report: dict) -> str:
    out = []
    rows = []
    for name, r in report["results"].items():
        if "error" in r:
            rows.append([name, "error", r["error"][:100], "", "", "", ""])
            continue
        rows.append([name, fmt(r["cold_start_s"], ".2f"), fmt(r["first_cold_start_s"], ".2f"), fmt(r["ready_rss_mb"], ".0f"),
                     fmt(r["peak_rss_mb"], ".0f"), fmt(r["shutdown"]["hwm_mb"], ".0f"), fmt(r.get("min_cosine_to_engine"), ".6f")])
    for name, why in report.get("skipped", {}).items():
        rows.append([name, "skipped", why, "", "", "", ""])
    out.append(table(["server", "cold start s (median)", "first start s", "RSS at ready MB", "peak RSS MB (load)",
                      "sum of VmHWM MB", "min cos vs engine"], rows))
    g = report["goals"]
    out.append("")
    peers = [k for k in g["rss_mb"] if k not in ("goal", "tinyembed", "met")]
    out.append(f"Goals: peak RSS <= {g['rss_mb']['goal']:.0f} MB: tinyembed {fmt(g['rss_mb']['tinyembed'], '.0f')} MB "
               f"({'met' if g['rss_mb']['met'] else 'NOT met'})"
               + "".join(f", {p} {fmt(g['rss_mb'][p], '.0f')} MB" for p in peers)
               + f"; ready <= {g['cold_start_s']['goal']:.0f} s: tinyembed {fmt(g['cold_start_s']['tinyembed'], '.2f')} s "
               f"({'met' if g['cold_start_s']['met'] else 'NOT met'})"
               + "".join(f", {p} {fmt(g['cold_start_s'][p], '.2f')} s" for p in peers) + ".")
    out.append("")
    names = [n for n, r in report["results"].items() if "points" in r]
    rows = []
    for i, point in enumerate(report["settings"]["points"]):
        base = report["results"].get("tinyembed", {}).get("points", [None] * (i + 1))[i]
        for name in names:
            p = report["results"][name]["points"][i]
            ratio = p["texts_per_s"] / base["texts_per_s"] if base and base["texts_per_s"] else None
            errors = sum(p["errors"].values())
            vs_off = (p["tokens_per_s"] / report["offline_tokens_per_s"]
                      if report.get("offline_tokens_per_s") and name == "tinyembed" else None)
            rows.append([point, name, p["requests"], errors, fmt(p["texts_per_s"], ".1f"), fmt(p["tokens_per_s"], ".0f"),
                         fmt(p["p50_ms"], ".1f"), fmt(p["p99_ms"], ".1f"), fmt(ratio, ".2f"),
                         fmt(100 * vs_off, ".0f") + "%" if vs_off else "-"])
    out.append(table(["texts x conns", "server", "requests", "errors", "texts/s", "tokens/s", "p50 ms", "p99 ms",
                      "texts/s vs tinyembed", "vs engine offline"], rows, "llrrrrrrrr"))
    c, s = report["corpus"], report["settings"]
    out.append("")
    idle = {}
    for name, r in report["results"].items():
        for row in r.get("points", []):
            for other, cpu in row.get("idle_cpu_s_of_others", {}).items():
                idle[other] = idle.get(other, 0.0) + cpu
    if idle:
        out.append("CPU seconds each server used while idle (during the other servers' points): "
                   + ", ".join(f"{n} {v:.1f} s" for n, v in idle.items()) + ".")
    counts = ", ".join(f"{n} {r.get('usage_tokens_first8')}" for n, r in report["results"].items() if "points" in r)
    out.append(f"Token counts differ between servers: usage.total_tokens for the first 8 texts: {counts}; "
               f"tinyembed's tokenizer counts {report.get('reference_usage_tokens_first8')}. Compare servers by texts/s.")
    for name, r in report["results"].items():
        if "command" in r:
            versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
            env = report["settings"].get("tinyembed_env") if name == "tinyembed" else None
            env_text = " ".join(f"{k}={v}" for k, v in (env or {}).items())
            out.append(f"- {name}: `{env_text + ' ' if env_text else ''}{' '.join(Path(a).name if a.startswith('/') and k == 0 else a for k, a in enumerate(r['command']))}`"
                       f" ({versions})")
    out.append("")
    out.append(f"Corpus: {c['texts']} mixed texts, {c['tokens']:,} tokens (mean {c['mean_tokens']}), sent in turn; "
               f"{s['duration_s']:.0f} s measured after {s['warmup_s']:.0f} s warm-up per point; {s['starts']} cold "
               f"start(s) per server; base64 responses; the load client runs on the same CPUs.")
    return "\n".join(out)


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    names = [n for n, r in report["results"].items() if "points" in r]
    singles = [(i, p) for i, p in enumerate(report["settings"]["points"]) if p.startswith("1x")]
    if not names or not singles:
        return None
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110)
    colors = {"tinyembed": "tab:blue", "infinity-emb": "tab:orange"}
    for name in names:
        pts = report["results"][name]["points"]
        conc = [int(p.split("x")[1]) for _, p in singles]
        color = colors.get(name)
        ax.plot(conc, [pts[i]["texts_per_s"] for i, _ in singles], marker="o", color=color, label=name)
        bx.plot(conc, [pts[i]["p50_ms"] for i, _ in singles], marker="o", color=color, label=f"{name} p50")
        bx.plot(conc, [pts[i]["p99_ms"] for i, _ in singles], marker="x", ls="--", color=color, label=f"{name} p99")
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent connections (1 text per request)")
        a.spines[["top", "right"]].set_visible(False)
        a.legend(fontsize=8, frameon=False)
    ax.set_ylabel("texts / s")
    ax.set_title("Throughput vs concurrency")
    bx.set_ylabel("latency ms")
    bx.set_yscale("log")
    bx.set_title("Latency vs concurrency")
    all_names = [n for n, r in report["results"].items() if "peak_rss_mb" in r]
    xs = np.arange(len(all_names))
    rss = [report["results"][n]["peak_rss_mb"] for n in all_names]
    cold = [report["results"][n]["cold_start_s"] for n in all_names]
    bars = cx.bar(xs - 0.2, rss, 0.4, color="tab:purple", label="peak RSS MB")
    cx.bar_label(bars, labels=[f"{v:.0f}" for v in rss], fontsize=8)
    cx.axhline(GOALS["rss_mb"], color="tab:purple", ls=":", lw=1)
    cx2 = cx.twinx()
    bars = cx2.bar(xs + 0.2, cold, 0.4, color="tab:olive", label="cold start s")
    cx2.bar_label(bars, labels=[f"{v:.1f}s" for v in cold], fontsize=8)
    cx2.axhline(GOALS["cold_start_s"], color="tab:olive", ls=":", lw=1)
    cx.set_xticks(xs, all_names)
    cx.set_ylabel("peak RSS MB (dotted: 300 MB goal)")
    cx2.set_ylabel("process start -> ready, s (dotted: 2 s goal)")
    cx.set_title("Memory and cold start")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--peers", action="store_true", help="also run infinity-emb (creates bench/.venv-infinity once)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--points", help=f"BATCHxCONCURRENCY,... (default {FULL_POINTS})")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--starts", type=int, help="cold starts per server (median)")
    parser.add_argument("--offline-tokens-per-s", type=float, help="the engine's offline rate, for a ratio column")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra `tinyembed serve` argument, e.g. --server-arg=--max-batch-tokens=8192 (repeatable)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the tinyembed server, e.g. OPENBLAS_NUM_THREADS=1 (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.server_env)
    report = run(args.model, args.peers, args.quick, args.points, args.duration, args.warmup, args.starts,
                 offline_tokens_per_s=args.offline_tokens_per_s, server_args=args.server_arg, server_env=env)
    if args.plot:
        plot(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
