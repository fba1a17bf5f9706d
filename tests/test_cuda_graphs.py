"""CUDA graphs for small token buckets and the overlapped upload (tinyembed/engine/ops/cuda_graphs.py,
CudaOps(overlap=True)): the same vectors as the eager path.

TestPadding runs everywhere: the bucket choice, the padded layout, and (on the numpy ops) that a
forward over the padded layout gives the unpadded vectors, which is the property the graphs rely
on. The GPU classes need CuPy and a CUDA device and are skipped otherwise:
    python -m pytest -m gpu tests/test_cuda_graphs.py -q
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from tinyembed.engine.ops import cuda_ops as ops_cuda
from tinyembed.engine.backend import Engine
from tinyembed.engine.ops.cuda_graphs import TOKEN_BUCKETS, bucket_for, padded_inputs
from tinyembed.engine.families.bert import Batch, EncoderModel
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.families import read_spec
from tinyembed.engine.checkpoints.weights import load_params

ROOT = Path(__file__).resolve().parents[1]
TINY = {name: ROOT / "tests" / "fixtures" / name for name in ("tiny-bert-fp32", "tiny-xlmr-fp32")}
_REASON = ops_cuda.unavailable_reason()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"needs a CUDA GPU: {_REASON}")]


def random_batch(rng, lengths, vocab, offset=0) -> Batch:
    return Batch.pack([rng.integers(3, vocab, n).astype(np.int32) for n in lengths], offset)


def split(padded: np.ndarray, bucket):
    tokens, seqs = bucket
    return padded[:tokens], padded[tokens:2 * tokens], padded[2 * tokens:]


class TestPadding:
    def test_buckets(self):
        assert bucket_for(16, 1, 256) == (16, 1)
        assert bucket_for(17, 3, 256) == (32, 4)
        assert bucket_for(200, 33, 256) == (256, 64)
        assert bucket_for(257, 1, 256) is None  # long batches run eagerly
        assert bucket_for(0, 0, 256) is None
        assert bucket_for(8, 9, 256) == (16, 16)  # empty sequences: the kernels skip them
        assert bucket_for(8, 17, 256) is None  # more sequences than the bucket has tokens: eager
        assert bucket_for(512, 2, 512) == (512, 2)
        assert all(a < b for a, b in zip(TOKEN_BUCKETS, TOKEN_BUCKETS[1:]))

    def test_layout(self):
        batch = Batch.pack([np.array([5, 6, 7], np.int32), np.array([8], np.int32)], 2)
        bucket = bucket_for(batch.num_tokens, len(batch), 256)
        ids, positions, cu = split(padded_inputs(batch, bucket), bucket)
        assert bucket == (16, 2)
        assert ids.tolist() == [5, 6, 7, 8] + [0] * 12
        assert positions.tolist() == [2, 3, 4, 2] + [0] * 12
        assert cu.tolist() == [0, 3, 4]
        batch = Batch.pack([np.array([1, 2], np.int32)] * 3)
        _, _, cu = split(padded_inputs(batch, (16, 4)), (16, 4))
        assert cu.tolist() == [0, 2, 4, 6, 6]  # the fourth sequence is empty

    @pytest.mark.parametrize("fixture", sorted(TINY))
    def test_padded_forward_gives_the_unpadded_vectors(self, fixture, request):
        """Padding tokens outside every sequence and empty trailing sequences leave the real
        vectors unchanged (numpy ops; pooling restricted to the real sequences as the CUDA pool
        kernel does by reading cu_seqlens[i]..cu_seqlens[i+1])."""
        spec = read_spec(TINY[fixture])
        ops = _SequenceBoundPool()
        model = EncoderModel(spec, load_params(spec), ops)
        rng = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
        for lengths in ([5], [1, 7, 3], [16], [9, 9, 9, 2, 1]):
            batch = random_batch(rng, lengths, spec.vocab_size, spec.position_offset)
            bucket = bucket_for(batch.num_tokens, len(batch), 256)
            with np.errstate(all="ignore"):  # padding rows may hold anything
                padded = model.forward_arrays(*split(padded_inputs(batch, bucket), bucket), bucket[0])
            np.testing.assert_allclose(padded[:len(batch)], model.forward(batch), rtol=1e-5, atol=1e-6)


class _SequenceBoundPool(NumpyOps):
    """Numpy ops that, like attention.cu and pool.cu, read only each sequence's own rows and skip
    empty sequences (numpy's reduceat would run the last sequence to the end of the array,
    padding included, and the numpy attention expects no empty sequence)."""

    def __init__(self):
        super().__init__(threads=1)

    @staticmethod
    def _real(cu_seqlens):
        return cu_seqlens[:int(np.searchsorted(cu_seqlens, cu_seqlens[-1])) + 1]

    def attention(self, qkv, cu_seqlens, max_len, num_heads):
        return super().attention(qkv, self._real(cu_seqlens), max_len, num_heads)

    def pool_normalize(self, hidden, cu_seqlens, mode):
        return super().pool_normalize(hidden[:int(cu_seqlens[-1])], self._real(cu_seqlens), mode)


# -- on a GPU ----------------------------------------------------------------------------------------
def gpu_engine(path: Path, dtype: str, **flags) -> Engine:
    spec = read_spec(path)
    return Engine(path.name, spec, ops_cuda.CudaOps(0, dtype, **flags))


def cosines(a, b):
    assert a.shape == b.shape and np.isfinite(b).all()
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def models():
    """The tiny fixtures (head_dim 8: the naive attention kernel) and MiniLM when it resolves
    (head_dim 32: the tensor-core kernel), as on the device check."""
    from tinyembed.common.errors import TinyEmbedError
    from tinyembed.engine.checkpoints.registry import resolve

    found = [TINY["tiny-bert-fp32"], TINY["tiny-xlmr-fp32"]]
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            return found + [resolve(name)]
        except TinyEmbedError:
            continue
    return found


SHORT = [[16], [1], [5, 11], [3, 3, 3], [30, 2, 1, 7, 9], [64] * 2, [100, 27], [250], [17] * 15]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", models(), ids=lambda p: p.name)
class TestOnGpu:
    pytestmark = needs_gpu

    def test_graph_replays_give_the_eager_vectors(self, path, dtype):
        eager, graphed = gpu_engine(path, dtype), gpu_engine(path, dtype, graphs=True)
        cache = graphed.model.graphs
        rng = np.random.default_rng(11)
        vocab, offset, cap = eager.spec.vocab_size, eager.spec.position_offset, eager.spec.max_seq_length
        for round_ in range(2):  # the second round replays graphs captured in the first
            for lengths in SHORT:
                batch = random_batch(rng, [min(n, cap) for n in lengths], vocab, offset)  # fresh ids: stale inputs would show
                want, got = eager.embed(batch), graphed.embed(batch)
                assert cosines(want, got).min() >= 0.99999, (lengths, round_)
                np.testing.assert_allclose(got, want, atol=2e-3)
        assert not cache.failed, f"captures failed: {cache.failed}"
        assert cache.captures >= 5 and cache.replays == 2 * len(SHORT)
        long = random_batch(rng, [cap] * (300 // cap + 1), vocab, offset)  # past the buckets: eager
        assert cosines(eager.embed(long), graphed.embed(long)).min() >= 0.99999
        assert cache.replays == 2 * len(SHORT)

    def test_a_replay_does_not_overwrite_an_earlier_result(self, path, dtype):
        graphed = gpu_engine(path, dtype, graphs=True)
        rng = np.random.default_rng(12)
        a, b = (random_batch(rng, [12], graphed.spec.vocab_size, graphed.spec.position_offset) for _ in range(2))
        first = graphed.model.forward_on_device(a)  # same bucket, not yet fetched ...
        graphed.model.forward_on_device(b)  # ... when the graph runs again
        np.testing.assert_allclose(graphed.model.ops.to_host(first), graphed.embed(a), atol=1e-6)

    def test_overlapped_uploads_give_the_same_vectors(self, path, dtype):
        eager = gpu_engine(path, dtype)
        both = gpu_engine(path, dtype, overlap=True, graphs=True)
        assert both.model.ops.copy_stream is not both.model.ops.stream
        rng = np.random.default_rng(13)
        top = min(both.spec.max_seq_length, 300)
        sequences = [rng.integers(3, both.spec.vocab_size, n).astype(np.int32) for n in rng.integers(1, top, 400)]
        for budget in (64, 512, 4096):  # many batches in flight: slots reused, uploads racing compute
            want = eager.embed_sequences(sequences, max_batch_tokens=budget)
            got = both.embed_sequences(sequences, max_batch_tokens=budget)
            assert cosines(want, got).min() >= 0.99999, budget
