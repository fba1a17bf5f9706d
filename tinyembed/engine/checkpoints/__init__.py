"""How a checkpoint is read: the model registry (names -> directories), config.json ->
ModelSpec (spec.py), safetensors reading (tensor_reader.py) and the encoder weights (weights.py).
Decoder families read their own config through families/ (families.read_spec picks which)."""
