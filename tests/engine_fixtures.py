"""Paths and loaders for the committed engine fixtures (see tests/fixtures/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DECODERS = ["tiny-qwen3", "tiny-qwen2-gte", "tiny-mistral", "tiny-gemma2"]  # weights/make_tiny_decoders.py
TINY_RERANKERS = ["tiny-reranker-bert", "tiny-reranker-xlmr"]  # weights/make_tiny_rerankers.py (tests/test_rerank.py)
TINY_MODELS = sorted(p.name for p in FIXTURES.glob("tiny-*")
                     if p.is_dir() and p.name not in TINY_DECODERS + TINY_RERANKERS)


def tiny_texts() -> list[str]:
    return json.loads((FIXTURES / "tiny_texts.json").read_text())


def tiny_expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "expected.npz") as data:
        return {key: data[key] for key in data.files}


def minilm_golden() -> tuple[dict, np.ndarray]:
    return json.loads((FIXTURES / "minilm_golden.json").read_text()), np.load(FIXTURES / "minilm_golden.npy")
