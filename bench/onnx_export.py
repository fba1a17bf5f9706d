"""Export a model directory's encoder to ONNX for the onnxruntime contender (run by
bench/throughput.py in a subprocess of its own; only the bench imports torch).

    python -m bench.onnx_export MODEL_DIR OUT/model.onnx

transformers' BertModel / XLMRobertaModel (eager attention) -> last_hidden_state, with batch
and sequence axes dynamic. The example input carries padding: a trace on an all-ones mask lets
transformers drop the mask, and the graph would then ignore it for every batch. The exported
graph is checked against PyTorch on a padded batch of another shape before it is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path


def export(model_dir: Path, target: Path) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {name: {0: batch, 1: seq} for name in ("input_ids", "attention_mask", "token_type_ids")}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Encoder(model), (ids, mask, torch.zeros_like(ids)), str(target), dynamo=True,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], dynamic_shapes=shapes, opset_version=18)

    # check on another shape with padding
    vocab = model.config.vocab_size
    ids = torch.randint(5, min(vocab, 2000), (3, 21))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state.numpy()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    feed = {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}}
    got = session.run(None, feed)[0]
    err = float(np.abs((got - ref) * mask.numpy()[..., None]).max())
    if err > 1e-3:
        target.unlink(missing_ok=True)
        raise SystemExit(f"ONNX export disagrees with PyTorch on a padded batch: max abs error {err:.3g}")
    return err


if __name__ == "__main__":
    error = export(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"exported {sys.argv[2]} (max abs error vs PyTorch on a padded batch: {error:.2e})")
