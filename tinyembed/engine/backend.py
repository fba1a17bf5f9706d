"""The backend contract: load a model, then `embed(batch) -> (n, dim) float32` unit vectors.

The scheduler, the HTTP layer, the CLI and the benches talk to an `Engine` and nothing below it.
An Engine owns a tokenizer and a model (an encoder, or a decoder family from engine/families)
running on one device's ops (numpy or CUDA).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from tinyembed.common.errors import ModelLoadError, TinyEmbedError
from tinyembed.engine.checkpoints import registry
from tinyembed.engine.checkpoints.spec import ModelSpec
from tinyembed.engine.checkpoints.weights import load_params
from tinyembed.engine.families import decoder_family, read_spec
from tinyembed.engine.families.bert import Batch, EncoderModel, truncate_dimensions
from tinyembed.engine.text.tokenize import Tokenizer
# issue 29: rerankers (cross-encoders) and quantized outputs
from tinyembed.engine import quantize
from tinyembed.engine.families.cross_encoder import CrossEncoderModel, is_cross_encoder, type_offset
from tinyembed.engine.text.pairs import PairTokenizer

PRECISIONS = (None, "fp32", "int8", "bf16")  # load_engine's; see its docstring

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
    precision: str = "fp32"  # the linear layers' arithmetic: "fp32", or "int8" (CPU, --precision int8)
    task: str = "embeddings"  # "rerank" for a cross-encoder: its `dimensions` is its one output label


class Engine:
    def __init__(self, name: str, spec: ModelSpec, ops, precision: str | None = None):
        self.spec = spec
        reranker = is_cross_encoder(spec)  # issue 29: pairs in, one logit out
        self.tokenizer = PairTokenizer(spec, type_offset(spec)) if reranker else Tokenizer(spec)
        self.model = CrossEncoderModel(spec, ops) if reranker else build_model(spec, ops, precision)
        self._calibration: quantize.Calibration | None = None
        self._calibrating = threading.Lock()
        self.info = ModelInfo(
            name=name,
            dimensions=self.model.num_labels if reranker else spec.hidden_size,
            max_input_tokens=spec.max_seq_length,
            vocab_size=spec.vocab_size,
            family=spec.family,
            pooling=spec.pooling,
            device=ops.name,
            prompts=dict(spec.prompts),
            kernels=getattr(ops, "kernels", ops.name),
            precision=precision_of(self.model, ops),
            task="rerank" if reranker else "embeddings",
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

    # -- quantized outputs (issue 29; engine/quantize.py) ---------------------------------------
    @property
    def calibration(self) -> quantize.Calibration:
        """The int8/uint8 calibration, computed on first use (load_engine does it at load for encoders)."""
        with self._calibrating:  # once, whoever asks first (a decoder's first int8 request)
            if self._calibration is None:
                self._calibration = quantize.load_or_calibrate(self.spec.path, self.embed_texts)
        return self._calibration

    @property
    def cached_calibration(self) -> quantize.Calibration | None:
        """The calibration if it is computed or on disk; never computes it."""
        if self._calibration is None:
            self._calibration = quantize.load_or_calibrate(self.spec.path, None)
        return self._calibration

    def quantize(self, vectors: np.ndarray, output_dtype: str, dimensions: int | None = None) -> np.ndarray:
        """`output_dtype` of vectors already cut to `dimensions`: float32, int8/uint8 or packed bits."""
        if output_dtype == "float":
            return vectors
        return self.calibration.quantize(vectors, output_dtype, dimensions)

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


def precision_of(model, ops) -> str:
    """What the model really runs in: a decoder says (fp32 or bf16 weights), else the ops' (fp32 or int8)."""
    return getattr(model, "precision", None) or getattr(ops, "precision", "fp32")


def takes_int8(spec: ModelSpec) -> bool:
    """--precision int8 packs encoder weights (ops/c_int8.py): embedding encoders only."""
    return not spec.is_decoder and not is_cross_encoder(spec)


def build_model(spec: ModelSpec, ops, precision: str | None = None):
    """The forward pass for the spec's family on these ops. precision: what was asked for; a
    decoder takes fp32 | bf16 (None: bf16 only when a bf16 checkpoint would not fit in float32),
    an encoder's arithmetic is its ops' (fp32 | int8)."""
    if not spec.is_decoder:
        if precision == "bf16":
            log.warning("--precision bf16: %s is an encoder, which has no bf16 path; it runs in %s", spec.path,
                        getattr(ops, "precision", "fp32"))
        return EncoderModel(spec, load_params(spec), ops)
    if not hasattr(ops, "decoder_attention"):
        raise ModelLoadError(f"{spec.path}: the {spec.family} decoder has no {ops.name} ops; use --device cpu")
    return decoder_family(spec.family).Model(spec, ops, None if precision == "int8" else precision)  # family names are model_types too


def make_ops(device: str = "cpu", dtype: str | None = None, threads: int | None = None,
             precision: str = "fp32"):
    """Ops for a device: "cpu", "cuda", "cuda:N", or "auto" (CUDA when CuPy sees a GPU).
    precision "int8" (dynamic int8 activations x int8 weights) is a CPU option."""
    if precision not in ("fp32", "int8"):  # the ops' arithmetic; load_engine maps --precision to it
        raise TinyEmbedError(f"unknown precision {precision!r}: use fp32 or int8")
    if precision != "fp32" and device != "cpu":
        raise TinyEmbedError(f"--precision {precision} runs on the CPU only (--device cpu); GPUs use --dtype")
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

        return make_cpu_ops(threads, precision)  # C kernels when they build, else numpy (logged)
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
                dtype: str | None = None, threads: int | None = None, precision: str | None = None) -> Engine:
    """precision (CPU): "fp32"; "int8" for embedding encoders (packed int8 weights, dynamic int8
    activations); "bf16" for decoders (memory-mapped bf16 weights). A model whose kind has no such
    path runs fp32, said once in the log. None: fp32, or bf16 for a bf16 decoder checkpoint that
    would not fit in memory as float32."""
    if precision not in PRECISIONS:
        raise TinyEmbedError(f"unknown precision {precision!r}: use fp32, int8 or bf16")
    path = registry.resolve(model)
    spec = read_spec(path)
    ops_precision = "int8" if precision == "int8" and takes_int8(spec) else "fp32"
    if precision == "int8" and ops_precision != "int8":
        log.warning("--precision int8: %s is a %s, which has no int8 path; it runs in fp32", path,
                    "decoder" if spec.is_decoder else "reranker")
    engine = Engine(name or model, spec, make_ops(device, dtype, threads, ops_precision), precision)
    if engine.info.task == "embeddings" and not spec.is_decoder:
        engine.calibration  # noqa: B018 -- int8 ranges before serving: no compute races a batch later
    # A decoder is calibrated when an int8/uint8 output first needs it (minutes for a large one
    # on a CPU): until then /v1/models lists its ranges only if a cached calibration exists.
    return engine
