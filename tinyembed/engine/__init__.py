"""Text -> unit vectors: registry, spec, weights, tokenizer, model, ops. Imports nothing above it.

The backend contract is `load_engine(...) -> Engine` and `Engine.embed(batch)`.
"""

from tinyembed.engine.backend import Engine, ModelInfo, load_engine, make_ops

__all__ = ["Engine", "ModelInfo", "load_engine", "make_ops"]
