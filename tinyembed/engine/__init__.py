"""Text -> unit vectors: registry, spec, weights, tokenizer, model, ops. Imports nothing above it.

The backend contract is `load_engine(...) -> Engine` and `Engine.embed(batch)`.
"""

from tinyembed.engine.backend import Engine, ModelInfo, expand_devices, load_engine, make_ops
from tinyembed.engine.checkpoints.registry import DEFAULT_MODEL

# The layers above (scheduler, server, jobs) import these names and nothing else from the engine.
__all__ = ["DEFAULT_MODEL", "Engine", "ModelInfo", "expand_devices", "load_engine", "make_ops"]
