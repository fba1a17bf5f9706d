"""sentence-transformers' quantize_embeddings outputs for tests/test_quantize.py (no torch there).

Random unit vectors (with exact zeros and a width that is not a multiple of 8) and a separate
calibration set; for each precision, what quantize_embeddings returns when calibrated on that
set, at the full width and at a Matryoshka width (truncate, renormalize, then quantize).
Regenerate with `python weights/make_quantize_expected.py`.
"""

from pathlib import Path

import numpy as np
import sentence_transformers
from sentence_transformers.quantization import quantize_embeddings

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quantize_expected.npz"
PRECISIONS = ("int8", "uint8", "binary", "ubinary")
WIDTH, CUT = 50, 20


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(29)
    vectors = unit(rng.standard_normal((64, WIDTH)))
    vectors[3, :7] = 0.0  # zeros: the sign bit of 0 is 0 (x > 0 is false)
    calibration = unit(rng.standard_normal((200, WIDTH)))
    out = {"vectors": vectors, "calibration": calibration, "cut": np.int64(CUT),
           "version": np.array(sentence_transformers.__version__)}
    for precision in PRECISIONS:
        out[precision] = quantize_embeddings(vectors, precision, calibration_embeddings=calibration)
        short, short_cal = unit(vectors[:, :CUT]), unit(calibration[:, :CUT])
        out[f"{precision}_cut"] = quantize_embeddings(short, precision, calibration_embeddings=short_cal)
    np.savez(OUT, **out)
    print(OUT, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
