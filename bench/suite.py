"""The CPU bench suite: every question in one run, written to one folder.

    python -m bench                       # full suite, tinyembed + sentence-transformers + onnxruntime
    python -m bench --peers               # + infinity-emb served side by side (own venv, installed once)
    python -m bench --quick               # small corpora, one repeat, short load points (minutes)
    python -m bench --only throughput,breakdown --model tests/fixtures/tiny-bert-fp32
    python -m bench --wait-idle 1.0       # first wait (up to --wait-timeout s) for a quiet machine

Parts, each a script you can also run alone (one question each):
  throughput   bench/throughput.py  engine tokens/s vs sentence-transformers and ONNX Runtime,
                                    mixed lengths and fixed 16/128/512 tokens
  breakdown    bench/breakdown.py   per-op and per-layer time of one batch, roofline vs measured peaks
  layernorm_steps  bench/layernorm_steps.py  one op from naive to fast numpy (the teaching note's CPU half)
  serving      bench/serving.py     HTTP: cold start, peak RSS, concurrency sweep; infinity-emb with --peers
  decoder      bench/decoder.py     a real-shape random Qwen3-Embedding-0.6B: tinyembed fp32 / bf16 vs
                                    transformers fp32 (sdpa), 8 x 512 and mixed; a 4B-shaped bf16 load
  gpu          bench/gpu.py         the CUDA suite, only where CuPy sees a GPU

Each part runs in its own subprocess and writes PART.json (versions, machine, load, git state,
corpus, settings, numbers); the suite adds results.md (every table), PNG plots when matplotlib
is installed, and suite.json (where and when, load before each part, the goals).
Output: bench/results/<date>-<time>/ (bench/results/latest points at the last complete suite), or
--out DIR. `--replot DIR` redraws a folder's plots and results.md from its JSON, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import breakdown, decoder, layernorm_steps, serving, throughput
from bench.common import MODEL, RESULTS, describe_environment, environment, loadavg, pyplot, wait_for_idle, write_json

PARTS = ("throughput", "breakdown", "layernorm_steps", "serving", "decoder", "gpu")


def run_part(name: str, argv: list[str], log=sys.stderr, timeout: float = 5400) -> dict:
    """python -m bench.NAME ARGV --json in a subprocess; its progress goes to our stderr."""
    cmd = [sys.executable, "-m", f"bench.{name}", *argv, "--json"]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}  (loadavg {loadavg()[0]:.2f})", file=log, flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode} (see the log above)"}
    text = done.stdout
    start = text.find("{")  # bench.gpu prints tables before its JSON
    if name == "gpu":
        start = text.rfind("\n{") + 1 if "\n{" in text else start
    report = json.loads(text[start:])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def gpu_available() -> bool:
    probe = "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="bundled name, model directory or cached HF repo id")
    parser.add_argument("--quick", action="store_true", help="small corpora, one repeat, short points")
    parser.add_argument("--peers", action="store_true",
                        help="also serve the model with infinity-emb (installs bench/.venv-infinity once)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    parser.add_argument("--contenders", default=",".join(throughput.CONTENDERS), help="throughput contenders")
    parser.add_argument("--lengths", default="mixed,16,128,512", help="throughput corpora")
    parser.add_argument("--seq-len", default=None, help="breakdown lengths (default 16,128,512; quick 16,128)")
    parser.add_argument("--wait-idle", type=float, metavar="LOAD",
                        help="first wait until the 1-minute loadavg is below LOAD")
    parser.add_argument("--wait-timeout", type=float, default=1200, help="seconds to wait for idle at most")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/<date>-<time>)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--replot", type=Path, metavar="DIR",
                        help="measure nothing: redraw the plots and results.md of a results folder from its JSON")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    for part in parts:
        if part not in PARTS:
            parser.error(f"--only: unknown part {part!r} (parts: {', '.join(PARTS)})")

    out = args.out or RESULTS / (time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    suite = {"question": "the tinyembed bench suite", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
             "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
             "parts": {}, "loadavg_before": {}}
    if args.wait_idle:
        suite["wait_idle"] = wait_for_idle(args.wait_idle, args.wait_timeout)
    suite["environment"] = environment()
    quick = ["--quick"] if args.quick else []
    model = ["--model", args.model]
    reports: dict[str, dict] = {}
    for part in parts:
        suite["loadavg_before"][part] = loadavg()
        if part == "throughput":
            report = run_part("throughput", [*model, *quick, "--lengths", args.lengths, "--contenders", args.contenders])
        elif part == "breakdown":
            seq = args.seq_len or ("16,128" if args.quick else "16,128,512")
            report = run_part("breakdown", [*model, *quick, "--seq-len", seq])
        elif part == "layernorm_steps":
            report = run_part("layernorm_steps", quick)
        elif part == "serving":
            extra = ["--peers"] if args.peers else []
            offline = _offline_rate(reports.get("throughput"))
            if offline:
                extra += ["--offline-tokens-per-s", f"{offline:.1f}"]
            report = run_part("serving", [*model, *quick, *extra])
        elif part == "decoder":  # its own model (a random real shape): --model does not apply
            report = run_part("decoder", ["--fixed", "2", "--texts", "12", "--rounds", "1", "--no-big"] if args.quick else [])
        else:
            if not gpu_available():
                report = {"skipped": "no GPU: CuPy sees no CUDA device on this machine"}
                print("gpu: skipped (no CUDA device)", file=sys.stderr)
            else:
                report = run_part("gpu", ["--repeats", "1"] if args.quick else [])
        reports[part] = report
        write_json(report, out / f"{part}.json")
        suite["parts"][part] = {"file": f"{part}.json", "error": report.get("error"), "skipped": report.get("skipped"),
                                "wall_s": report.get("wall_s")}
    suite["loadavg_after"] = loadavg()
    suite["summary"] = summary(reports)
    plots = [] if args.no_plots else make_plots(reports, out)
    suite["plots"] = [p.name for p in plots]
    write_json(suite, out / "suite.json")
    (out / "results.md").write_text(render(suite, reports, plots))
    latest = RESULTS / "latest"
    if out.parent == RESULTS and set(parts) == set(PARTS):  # `latest` is the last complete suite
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    print((out / "results.md").read_text())
    print(f"\nwritten: {out}/ (results.md, suite.json, {', '.join(f'{p}.json' for p in parts)}"
          f"{', ' + ', '.join(p.name for p in plots) if plots else ''})", file=sys.stderr)
    return 0 if not any(r.get("error") for r in reports.values()) else 1


def replot(out: Path) -> int:
    suite = json.loads((out / "suite.json").read_text())
    reports = {part: json.loads((out / info["file"]).read_text()) for part, info in suite["parts"].items()}
    plots = make_plots(reports, out)
    (out / "results.md").write_text(render(suite, reports, plots))
    print(f"redrawn: {out}/ (results.md{', ' + ', '.join(p.name for p in plots) if plots else ''})", file=sys.stderr)
    return 0


def _offline_rate(report: dict | None) -> float | None:
    if not report or "rows" not in report:
        return None
    row = next((r for r in report["rows"] if r["corpus"] == "mixed" and r["contender"] == "tinyembed"
                and "tokens_per_s" in r), None)
    return row["tokens_per_s"] if row else None


def summary(reports: dict) -> dict:
    s = {}
    t = reports.get("throughput", {})
    for row in t.get("rows", []):
        if row["contender"] != "tinyembed" and "tinyembed_speedup" in row:
            s[f"tinyembed_vs_{row['contender']}_{row['corpus']}"] = round(row["tinyembed_speedup"], 3)
    g = reports.get("serving", {}).get("goals")
    if g:
        s["goals"] = g
    return s


def make_plots(reports: dict, out: Path) -> list[Path]:
    if pyplot() is None:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return []
    paths = []
    if "rows" in reports.get("throughput", {}):
        paths.append(throughput.plot(reports["throughput"], out / "throughput.png"))
    if "profiles" in reports.get("breakdown", {}):
        paths.extend(breakdown.plot(reports["breakdown"], out))
    if "results" in reports.get("serving", {}):
        paths.append(serving.plot(reports["serving"], out / "serving.png"))
    return [p for p in paths if p]


def render(suite: dict, reports: dict, plots: list[Path]) -> str:
    env = suite["environment"]
    lines = [f"# tinyembed bench results, {suite['date']}", "",
             f"Command: `{suite['command']}`", "",
             f"Machine: {describe_environment(env)}.", ""]
    v = env["versions"]
    lines.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    if "wait_idle" in suite:
        w = suite["wait_idle"]
        lines.append(f"Waited {w['waited_s']:.0f} s for a quiet machine (reached: {w['reached']}).")
    lines.append("Load (1-minute loadavg) before each part: " + ", ".join(
        f"{k} {val[0]:.2f}" for k, val in suite["loadavg_before"].items() if val) + f"; after: {suite['loadavg_after'][0]:.2f}.")
    sections = {"throughput": ("Engine throughput (bench/throughput.py)", throughput.markdown),
                "breakdown": ("Where the time goes: one batch, per op and per layer (bench/breakdown.py)", breakdown.markdown),
                "layernorm_steps": ("One op, naive to fast: add + LayerNorm on the CPU (bench/layernorm_steps.py)",
                                    layernorm_steps.markdown),
                "serving": ("Serving: cold start, memory, concurrency (bench/serving.py)", serving.markdown),
                "decoder": ("Decoder embedder on the CPU: fp32 / bf16 vs transformers (bench/decoder.py)",
                            lambda report: "```\n" + decoder.render(report) + "\n```")}
    for part, report in reports.items():
        title, render_part = sections.get(part, (f"{part}", None))
        lines += ["", f"## {title}", ""]
        if report.get("error"):
            lines.append(f"Failed: {report['error']}")
        elif report.get("skipped"):
            lines.append(f"Skipped: {report['skipped']}")
        elif render_part:
            lines.append(render_part(report))
        else:
            lines.append("```json\n" + json.dumps(report, indent=2)[:20000] + "\n```")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
