"""Server settings with every default in one place. The CLI fills these from flags and
TINYEMBED_* environment variables; the app and the HTTP layer only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyembed.engine import DEFAULT_MODEL

SERVICE_TIERS = ("auto", "default", "flex", "priority")
LOG_FORMATS = ("plain", "json")


@dataclass(frozen=True)
class ModelSource:
    """One served model: the id clients use, where to load it from, and its extra names."""

    name: str
    path: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpLimits:
    """What one client may cost the HTTP layer. Timeouts are in seconds."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024  # request line + all headers
    max_headers: int = 100
    max_connections: int = 1024
    max_pipelined: int = 16  # requests read ahead on one connection before reading pauses
    header_timeout: float = 10.0  # first byte of a request -> end of its headers
    body_timeout: float = 30.0  # end of headers -> end of body
    idle_timeout: float = 15.0  # a keep-alive connection with nothing to do is closed
    first_byte_timeout: float = 5.0  # a new connection that has sent nothing is closed (server/slots.py)
    linger_timeout: float = 2.0  # after an error reply, unread input is discarded this long
    write_timeout: float = 30.0  # a reply stuck in a full send buffer this long: the connection is cut
    send_buffer_bytes: int = 256 * 1024  # replies beyond this wait in the kernel, not in our memory


@dataclass(frozen=True)
class RequestLimits:
    max_inputs: int = 2048
    max_tokens_per_request: int = 300_000
    request_timeout: float = 60.0  # arrival -> start of its batch; 408 after that
    max_queue_tokens: int = 500_000  # admitted but unfinished tokens; 503 beyond


@dataclass(frozen=True)
class RateLimits:
    """Per API key (per client address when no keys are configured); 0 turns a limit off."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


@dataclass(frozen=True)
class BatchSettings:
    """The Files and Batches API (jobs/routes.py); off unless data_dir is set."""

    data_dir: str | None = None  # sqlite state + file contents; unfinished batches resume from here
    max_upload_bytes: int = 200 * 1024 * 1024  # per file (OpenAI's batch limit); --max-body-bytes bounds it too
    file_retention_days: float = 30.0  # uploads and batch outputs are deleted after this; 0 keeps them
    max_batch_requests: int = 50_000  # lines per batch file


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelSource, ...] = (ModelSource(DEFAULT_MODEL, DEFAULT_MODEL),)
    # repr=False: keys must never reach a log line, even one that prints the config.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_key: str | None = field(default=None, repr=False)  # set: GET /metrics needs this Bearer key
    metrics_label_secret: str | None = field(default=None, repr=False)  # HMAC secret of usage labels (auth.py)
    auto_truncate: bool = False
    device: str = "cpu"
    dtype: str | None = None
    precision: str | None = None  # fp32 | int8 (encoders) | bf16 (decoders) on the CPU; None: see load_engine
    threads: int | None = None  # compute threads of the CPU ops (None: the engine decides)
    tokenizer_threads: int = 2
    max_batch_tokens: int = 16384  # hard cap on a forward pass
    # seconds one forward pass should take; the scheduler learns the token budget that fits it
    # (scheduler/budget.py). 0: no time rule, batches fill to max_batch_tokens.
    max_batch_latency: float = 0.075
    max_batch_sequences: int | None = None  # sequences per forward pass (None: no limit)
    # bytes for the whole process (weights, work buffers, requests in flight); None: measured at
    # start (loaded + 144 MB). See server/memory_guard.py. (issue 27)
    max_memory: int | None = None
    batching: str = "continuous"  # continuous (Scheduler) | per-request (DirectRunner: a baseline)
    log_format: str = "plain"
    access_log: bool = True
    shutdown_timeout: float = 30.0  # how long SIGTERM waits for in-flight requests
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio
    http: HttpLimits = HttpLimits()
    requests: RequestLimits = RequestLimits()
    rate: RateLimits = RateLimits()
    batch: BatchSettings = BatchSettings()


def memory_size(text: str) -> int:
    """'300M', '1.5G', '300MB', '314572800' -> bytes (M and G are MiB and GiB)."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in "KMG" and value else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"--max-memory {text!r}: give bytes, or a size such as 300M or 2G") from None
    if size <= 0:
        raise ValueError("--max-memory must be positive")
    return size
