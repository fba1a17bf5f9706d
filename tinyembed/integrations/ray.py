"""Ray Data: embed a text column of any Ray dataset (parquet, JSONL, CSV, ...) with tinyembed.

    import ray
    from tinyembed.integrations.ray import Embedder

    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": "all-MiniLM-L6-v2"},
                        concurrency=4, batch_size=256)
    ds.write_parquet("s3://bucket/vectors/")

Ray builds one Embedder per actor (`concurrency` actors), so the model loads once per actor,
not once per batch. Each batch comes back with every column it had plus `output_column`: a
fixed-size list of float32 (`dimensions` long), the same vectors `load_engine(model).embed_texts`
gives. With `num_gpus=1` the actor's engine runs on the GPU Ray gave it (device "auto").
Needs the `ray` extra: `pip install 'tinyembed[ray]'`.
"""

from __future__ import annotations

import numpy as np

try:
    import pyarrow as pa
except ImportError:  # pragma: no cover - depends on the install
    raise ImportError("tinyembed.integrations.ray needs the ray extra: pip install 'tinyembed[ray]'") from None

from tinyembed.engine import DEFAULT_MODEL, load_engine

__all__ = ["Embedder"]


class Embedder:
    """A callable class for `Dataset.map_batches` (batch in -> batch + an embedding column)."""

    def __init__(self, model: str = DEFAULT_MODEL, *, text_column: str = "text", output_column: str = "embedding",
                 dimensions: int | None = None, input_type: str | None = None, truncate: bool = True,
                 device: str = "auto", dtype: str | None = None, threads: int | None = None,
                 batch_tokens: int = 16384):
        """model: a name or a model directory (each Ray node must be able to resolve it).
        dimensions: Matryoshka truncation (first N components, renormalized); None = native.
        input_type: "query" / "document" prompts of models that have them. truncate: cut
        over-long texts to the model's maximum instead of failing the batch. device: "auto"
        is the GPU Ray assigned to this actor when it has one, else the CPU."""
        self.engine = load_engine(model, device=_device(device), dtype=dtype, threads=threads)
        self.text_column = text_column
        self.output_column = output_column
        self.dimensions = dimensions
        self.input_type = input_type
        self.truncate = truncate
        self.batch_tokens = batch_tokens
        if dimensions is not None and not 1 <= dimensions <= self.engine.info.dimensions:
            raise ValueError(f"dimensions must be 1..{self.engine.info.dimensions} for this model, not {dimensions}")

    def __call__(self, batch):
        table = _to_table(batch)
        if self.text_column not in table.column_names:
            raise ValueError(f"no column {self.text_column!r} to embed; the batch has {table.column_names} "
                             "(pass text_column=... in fn_constructor_kwargs)")
        texts = table.column(self.text_column).to_pylist()
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"column {self.text_column!r}: row {row} of this batch is {type(text).__name__}, "
                                 "not a string")
        vectors = self.embed(texts)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()),
                                                   vectors.shape[1])
        if self.output_column in table.column_names:
            return table.set_column(table.column_names.index(self.output_column), self.output_column, column)
        return table.append_column(self.output_column, column)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimensions) float32 unit vectors, in order."""
        sequences = self.engine.tokenizer.encode(texts, self.truncate, self.input_type)
        return self.engine.embed_sequences(sequences, self.batch_tokens, self.dimensions)


def _device(device: str) -> str:
    """"auto" inside a Ray actor: the GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if device != "auto":
        return device
    import ray

    if not ray.is_initialized():  # outside Ray: CUDA when CuPy sees a GPU, like the CLI's "auto"
        return "auto"
    return "cuda" if ray.get_gpu_ids() else "cpu"


def _to_table(batch) -> pa.Table:
    """Whatever batch format Ray hands over (pyarrow, pandas, dict of numpy) -> a pyarrow Table."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({name: _column(values) for name, values in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)  # a pandas DataFrame


def _column(values) -> pa.Array:
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if values.ndim > 1:  # a tensor column: keep Ray's own tensor type
        from ray.data.extensions import ArrowTensorArray

        return ArrowTensorArray.from_numpy(values)
    return pa.array(values.tolist() if values.dtype == object else values)
