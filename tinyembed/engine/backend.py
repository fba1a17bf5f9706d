"""The backend contract: load a model, then `embed(batch) -> (n, dim) float32` unit vectors.

The scheduler, the HTTP layer, the CLI and the benches talk to an `Engine` and nothing below it.
An Engine owns a tokenizer and a model (an encoder, or a decoder family from engine/families)
running on one device's ops (numpy or CUDA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from tinyembed.common.errors import ModelLoadError, TinyEmbedError
from tinyembed.engine.checkpoints import registry
from tinyembed.engine.checkpoints.spec import ModelSpec
from tinyembed.engine.checkpoints.weights import load_params
from tinyembed.engine.families import decoder_family, read_spec
from tinyembed.engine.families.bert import Batch, EncoderModel, truncate_dimensions
from tinyembed.engine.text.tokenize import Tokenizer

log = logging.getLogger("tinyembed")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimensions: int
    max_input_tokens: int
    vocab_size: int
    family: str
    pooling: str
    device: str
    prompts: dict[str, str] = field(default_factory=dict)
    kernels: str = ""  # which kernels run: "c" or "numpy" on the CPU, "cuda" on a GPU


class Engine:
    def __init__(self, name: str, spec: ModelSpec, ops):
        self.spec = spec
        self.tokenizer = Tokenizer(spec)
        self.model = build_model(spec, ops)
        self.info = ModelInfo(
            name=name,
            dimensions=spec.hidden_size,
            max_input_tokens=spec.max_seq_length,
            vocab_size=spec.vocab_size,
            family=spec.family,
            pooling=spec.pooling,
            device=ops.name,
            prompts=dict(spec.prompts),
            kernels=getattr(ops, "kernels", ops.name),
        )

    def pack(self, sequences: list[np.ndarray]) -> Batch:
        return Batch.pack(sequences, self.spec.position_offset)

    def embed(self, batch: Batch) -> np.ndarray:
        """(n, H) float32 L2-normalized vectors for a packed batch."""
        if len(batch) == 0:
            return np.zeros((0, self.info.dimensions), dtype=np.float32)
        return self.model.forward(batch)

    # -- memory (issue 27): the scheduler sizes batches so that these fit its budget ------------
    def work_bytes(self, tokens: int) -> int:
        """Host bytes the forward's work buffers take for a batch of `tokens`: the arena's size
        once reserved for it. 0 on a GPU (they live in device memory: docs/memory.md)."""
        if not self.info.device.startswith("cpu"):
            return 0
        return tokens * work_bytes_per_token(self.spec)

    def reserve_work(self, tokens: int) -> None:
        """Size the work buffers for batches of up to `tokens`, allocated once, then reused."""
        arena = getattr(self.model.ops, "arena", None)
        if arena is not None:
            arena.reserve(tokens)

    def with_dimensions(self, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
        """Matryoshka `dimensions`: the first N components of each vector, renormalized to unit
        length; None (or the native size) leaves the vectors as they are."""
        return truncate_dimensions(vectors, dimensions)

    def embed_sequences(self, sequences: list[np.ndarray], max_batch_tokens: int = 16384,
                        dimensions: int | None = None) -> np.ndarray:
        """Token-id arrays -> vectors, packed into batches of at most max_batch_tokens. Batch N+1
        is enqueued before batch N's vectors are fetched: on a GPU its upload and launches
        overlap N's compute (on the CPU the forward is synchronous and nothing changes)."""
        batches, batch, tokens = [], [], 0
        for seq in sequences:
            if batch and tokens + len(seq) > max_batch_tokens:
                batches.append(self.pack(batch))
                batch, tokens = [], 0
            batch.append(seq)
            tokens += len(seq)
        if batch or not batches:
            batches.append(self.pack(batch))
        out, pending = [], None
        for packed in batches:
            started = self._start(packed)
            if pending is not None:
                out.append(self._fetch(pending))
            pending = started
        out.append(self._fetch(pending))
        return self.with_dimensions(np.concatenate(out), dimensions)

    def _fetch(self, vectors) -> np.ndarray:
        return vectors if isinstance(vectors, np.ndarray) else self.model.ops.to_host(vectors)

    def _start(self, batch: Batch):
        """Enqueue a batch's forward; its vectors stay on the device until to_host."""
        if len(batch) == 0:
            return np.zeros((0, self.info.dimensions), dtype=np.float32)
        return self.model.forward_on_device(batch)

    def embed_texts(self, texts: list[str], truncate: bool = True, input_type: str | None = None,
                    dimensions: int | None = None, prompt_name: str | None = None) -> np.ndarray:
        sequences = self.tokenizer.encode(texts, truncate, input_type, prompt_name)
        return self.embed_sequences(sequences, dimensions=dimensions)


def work_bytes_per_token(spec: ModelSpec) -> int:
    """float32 activations one token holds at once in the forward pass. Encoder: x, the
    attention context and its projection (3 x H), Q|K|V (3H), the FFN (I), +I for the numpy
    ops' temporaries. Decoder: the same shape with K/V at the KV width and a gated MLP (3 x I)."""
    h, i = spec.hidden_size, spec.intermediate_size
    if spec.arch is None:
        return 4 * (6 * h + 2 * i)
    kv = spec.arch.num_kv_heads * spec.arch.head_dim
    q = spec.arch.num_heads * spec.arch.head_dim
    return 4 * (4 * h + 2 * q + 2 * kv + 3 * i)


def build_model(spec: ModelSpec, ops):
    """The forward pass for the spec's family on these ops."""
    if not spec.is_decoder:
        return EncoderModel(spec, load_params(spec), ops)
    if not hasattr(ops, "decoder_attention"):
        raise ModelLoadError(f"{spec.path}: the {spec.family} decoder has no {ops.name} ops; use --device cpu")
    return decoder_family(spec.family).Model(spec, ops)  # family names are model_types too


def make_ops(device: str = "cpu", dtype: str | None = None, threads: int | None = None):
    """Ops for a device: "cpu", "cuda", "cuda:N", or "auto" (CUDA when CuPy sees a GPU)."""
    if device == "auto":
        from tinyembed.engine.ops import cuda_ops

        if cuda_ops.available():
            try:
                return cuda_ops.CudaOps(0, dtype or "float16")
            except TinyEmbedError as exc:  # a GPU is there but the kernels cannot run on it
                log.warning("--device auto: %s; running on the CPU", exc)
        device = "cpu"
    if device == "cpu":
        if dtype not in (None, "float32"):
            raise TinyEmbedError(f"--dtype {dtype} needs a GPU; the CPU path computes in float32")
        from tinyembed.engine.ops.c_ops import make_cpu_ops

        return make_cpu_ops(threads)  # C kernels when they build, else numpy (logged)
    if "," in device or device == "cuda:all":
        raise TinyEmbedError(f"--device {device}: one engine runs on one device; several GPUs are for "
                             "`tinyembed serve` (and `tinyembed embed --ray`: one actor per GPU)")
    if device == "cuda" or device.startswith("cuda:"):
        from tinyembed.engine.ops import cuda_ops

        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise TinyEmbedError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
        index = int(index)
        return cuda_ops.CudaOps(index, dtype or "float16")
    raise TinyEmbedError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")


def expand_devices(device: str) -> list[str]:
    """A --device value -> the devices it names: "cuda:0,cuda:1" -> both, "cuda:all" -> every GPU
    CuPy sees, anything else -> itself (make_ops checks it)."""
    if device == "cuda:all":
        from tinyembed.engine.ops import cuda_ops

        count = cuda_ops.device_count()
        if count == 0:
            raise TinyEmbedError(f"--device cuda:all: {cuda_ops.unavailable_reason() or 'no CUDA device'}")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in device.split(",")]
    if len(devices) > 1:
        if any(not (d == "cuda" or d.startswith("cuda:")) for d in devices):
            raise TinyEmbedError(f"--device {device}: a list names GPUs only, e.g. cuda:0,cuda:1")
        indices = [d.partition(":")[2] or "0" for d in devices]
        if len(set(indices)) != len(indices):
            raise TinyEmbedError(f"--device {device}: a device is named twice")
        return [f"cuda:{i}" for i in indices]
    return devices


def load_engine(model: str = registry.DEFAULT_MODEL, name: str | None = None, device: str = "cpu",
                dtype: str | None = None, threads: int | None = None) -> Engine:
    path = registry.resolve(model)
    spec = read_spec(path)
    return Engine(name or model, spec, make_ops(device, dtype, threads))
