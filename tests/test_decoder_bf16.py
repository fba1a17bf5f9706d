"""bf16 decoder weights on the CPU (--precision bf16): tiny bf16 checkpoints made here from the
committed fixtures (each tensor rounded to bf16 and streamed to safetensors, no torch), loaded
memory-mapped, multiplied in place (bf16_matmul), answering as the float32 path does on the
same file (cosine) and close to transformers' fp32 vectors of the original; the automatic choice; the refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinyembed.common.errors import ModelLoadError, TinyEmbedError
from tinyembed.engine import Engine, load_engine
from tinyembed.engine.checkpoints import bf16
from tinyembed.engine.checkpoints.tensor_reader import CheckpointReader, checkpoint_files
from tinyembed.engine.families import read_spec
from tinyembed.engine.ops.numpy_ops import NumpyOps

from engine_fixtures import FIXTURES

TEXTS = json.loads((FIXTURES / "decoder_texts.json").read_text())["texts"]
FAMILIES = ["tiny-qwen3", "tiny-qwen2-gte", "tiny-gemma2"]  # q/k norms; biases; (1+w) norms and scaled embedding


def to_bf16_dir(source, target, matrices_only=False):
    """A copy of a fixture whose weights are bf16 (one file; norms and biases too, as real bf16
    checkpoints store them, unless matrices_only)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    reader = CheckpointReader(source)
    shapes = {name: info.shape for name, info in reader.tensors.items()}
    dtypes = {n: "BF16" if len(s) == 2 or not matrices_only else "F32" for n, s in shapes.items()}
    bf16.write_safetensors(target / "model.safetensors", shapes, dtypes,
                           lambda n: bf16.float32_to_bf16(reader.read(n)) if dtypes[n] == "BF16" else reader.read(n))
    return target


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    path = to_bf16_dir(FIXTURES / request.param, tmp_path_factory.mktemp("bf16") / request.param)
    return request.param, path


def test_bf16_weights_stay_mapped_and_answer_as_fp32(pair):
    name, path = pair
    small = load_engine(str(path), precision="bf16")
    assert small.model.precision == "bf16"
    mapped = [w for key, w in small.model.p.items() if isinstance(w, list)]
    assert mapped and all(part.dtype == np.uint16 and isinstance(part.base, np.memmap) for w in mapped for part in w)
    assert small.model.p["embed"].dtype == np.uint16
    wide = load_engine(str(path), precision="fp32")
    assert wide.model.precision == "fp32" and all(isinstance(w, np.ndarray) and w.dtype == np.float32
                                                   for w in wide.model.p.values())
    got, want = small.embed_texts(TEXTS), wide.embed_texts(TEXTS)
    # the same bf16 weights; the bf16 GEMM also rounds its inputs to bf16 (measured >= 0.99995)
    assert np.min(np.sum(got * want, axis=1)) >= 0.9999
    with np.load(FIXTURES / name / "expected.npz") as exp:  # transformers, fp32 weights of the original
        sequences = [exp["input_ids"][a:b] for a, b in zip(exp["cu_seqlens"][:-1], exp["cu_seqlens"][1:])]
        reference = exp[[k for k in exp.files if k not in ("input_ids", "cu_seqlens")][0]]
    vectors = small.embed_sequences(sequences)
    assert vectors.shape == reference.shape
    assert np.min(np.sum(vectors * reference, axis=1)) >= 0.999


def test_numpy_ops_run_bf16_weights_too(pair):
    _, path = pair
    spec = read_spec(path)
    numpy_engine = Engine("n", spec, NumpyOps(2), "bf16")
    got, want = numpy_engine.embed_texts(TEXTS), load_engine(str(path), precision="bf16").embed_texts(TEXTS)
    # one rounding of an input to bf16 may flip on a last-bit difference upstream: not atol-equal
    assert np.min(np.sum(got * want, axis=1)) >= 0.99999


def test_fp32_checkpoint_in_bf16_is_rounded_as_the_bf16_file(tmp_path):
    source = FIXTURES / "tiny-qwen3"
    rounded = load_engine(str(source), precision="bf16")
    assert all(part.base is None or not isinstance(part.base, np.memmap)
               for w in rounded.model.p.values() if isinstance(w, list) for part in w)  # read, then rounded
    from_file = load_engine(str(to_bf16_dir(source, tmp_path / "q", matrices_only=True)), precision="bf16")
    np.testing.assert_allclose(rounded.embed_texts(TEXTS), from_file.embed_texts(TEXTS), atol=1e-6)


def test_automatic_precision(pair, monkeypatch, caplog):
    _, path = pair
    assert load_engine(str(path)).model.precision == "fp32"  # fits: float32, as before
    size = sum(f.stat().st_size for f in checkpoint_files(path))
    monkeypatch.setattr(bf16, "available_memory", lambda: size)  # float32 (2x the file) would not fit
    with caplog.at_level("WARNING", logger="tinyembed"):
        assert load_engine(str(path)).model.precision == "bf16"
    assert "--precision bf16" in caplog.text
    assert load_engine(str(FIXTURES / "tiny-qwen3")).model.precision == "fp32"  # float32 file: never guessed
    assert load_engine(str(path), precision="fp32").model.precision == "fp32"  # asked: kept


def test_precisions_a_model_has_no_path_for_run_fp32_and_unknown_ones_are_refused(caplog):
    # one --precision serves every model of a server: an encoder asked for bf16, a decoder asked
    # for int8, each runs the arithmetic it has and says so
    encoder = load_engine(str(FIXTURES / "tiny-bert-fp32"), precision="bf16")
    assert encoder.info.precision == "fp32" and "no bf16 path" in caplog.text
    decoder = load_engine(str(FIXTURES / "tiny-qwen3"), precision="int8")
    assert decoder.info.precision == "fp32" and "no int8 path" in caplog.text
    with pytest.raises(TinyEmbedError, match="unknown precision"):
        load_engine(str(FIXTURES / "tiny-qwen3"), precision="int4")


def test_cli_embed_with_precision(pair):
    _, path = pair
    out = subprocess.run([sys.executable, "-m", "tinyembed.cli", "embed", "--model", str(path), "--precision", "bf16",
                          "hello world"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    vector = np.array(json.loads(out.stdout.splitlines()[0])["embedding"], np.float32)
    np.testing.assert_allclose(vector, load_engine(str(path), precision="bf16").embed_texts(["hello world"])[0], atol=1e-6)
    bad = subprocess.run([sys.executable, "-m", "tinyembed.cli", "embed", "--model", str(path), "--precision", "fp8", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def test_no_automatic_bf16_without_the_cpu_ops(pair, monkeypatch):
    """Ops without bf16_matmul (a GPU's) never get bf16 by the automatic choice, and refuse it asked."""
    _, path = pair
    monkeypatch.setattr(bf16, "available_memory", lambda: 1)
    spec = read_spec(path)

    class NoBf16(NumpyOps):  # the CPU ops less their bf16 op, as CudaOps is
        def __getattribute__(self, name):
            if name == "bf16_matmul":
                raise AttributeError(name)
            return super().__getattribute__(name)

    ops = NoBf16(2)
    assert Engine("x", spec, ops).model.precision == "fp32"
    with pytest.raises(ModelLoadError, match="on a GPU use --dtype"):
        Engine("x", spec, ops, "bf16")


def test_server_with_precision_bf16(pair, tmp_path_factory):
    import openai

    from conftest import start_server

    name, path = pair
    proc = start_server(tmp_path_factory, "bf16", ["--model", f"m={path}", "--precision", "bf16"])
    try:
        with openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0) as client:
            reply = client.embeddings.create(model="m", input=TEXTS[:3], encoding_format="float")
        got = np.array([d.embedding for d in reply.data], np.float32)
        np.testing.assert_allclose(got, load_engine(str(path), precision="bf16").embed_texts(TEXTS[:3]), atol=1e-5)
    finally:
        assert proc.stop() == 0, proc.log()
