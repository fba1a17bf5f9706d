"""The forward's work buffers (engine/ops/arena.py): reused between batches, sized once from the
batch cap, and the vectors they give are bit-identical to a fresh engine's (issue 27)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine import load_engine
from tinyembed.engine.ops.arena import Arena
from tests.engine_fixtures import tiny_texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    base = tiny_texts()
    return [" ".join(base[i % len(base)] for i in range(k % 3 + 1)) for k in range(24)]


def _engine():
    engine = load_engine("all-MiniLM-L6-v2")
    assert engine.info.kernels == "c", "the arena is the C ops' buffers: this test needs the C kernels"
    return engine


def test_reused_buffers_give_bit_identical_vectors(texts):
    reused = _engine()
    reused.reserve_work(2048)
    sequences = reused.tokenizer.encode(texts, True)
    batches = [sequences[:16], sequences[16:17], sequences[17:], sequences[:3], sequences]  # big, tiny, mixed
    outputs = [reused.embed(reused.pack(b)) for b in batches]
    outputs += [reused.embed(reused.pack(b)) for b in batches]  # again: every buffer now reused, dirty
    fresh = _engine()
    for batch, got in zip(batches + batches, outputs):
        fresh.model.ops.arena = Arena()  # new buffers, never used before, sized for this batch alone
        want = fresh.embed(fresh.pack(batch))
        assert got.tobytes() == want.tobytes()


def test_arena_is_allocated_once_and_sized_from_the_reservation(texts):
    engine = _engine()
    engine.reserve_work(1024)
    arena = engine.model.ops.arena
    sequences = engine.tokenizer.encode(texts, True)
    engine.embed(engine.pack(sequences[:2]))  # small: the fused layers (ops/c_fused.py)
    engine.embed(engine.pack(sequences))  # large: op by op
    first = arena.allocations
    held = arena.nbytes
    for size in (1, 5, 12, 24, 3):  # growing and shrinking batches, all under the reservation
        engine.embed(engine.pack(sequences[:size]))
    assert arena.allocations == first  # nothing allocated once each path has run
    assert arena.nbytes == held
    assert 0 < held <= engine.work_bytes(1024)  # what the memory budget counts covers it


def test_a_batch_past_the_reservation_grows_in_place():
    arena = Arena(reserved_rows=8)
    a = arena.take(4, 16)
    assert a.shape == (4, 16) and arena.nbytes == 8 * 16 * 4
    del a
    b = arena.take(32, 16)  # larger than reserved: the free base is replaced, not kept beside it
    assert b.shape == (32, 16) and arena.nbytes == 32 * 16 * 4
    c = arena.take(8, 16)  # b is alive: a second base
    assert arena.nbytes == (32 + 8) * 16 * 4
    assert not np.shares_memory(b, c)
