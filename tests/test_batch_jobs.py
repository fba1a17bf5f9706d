"""batch_jobs: the job runner in-process, on the tiny fixture model and the real DirectRunner
(wrapped to observe or disturb it): flex tier, backpressure, resume after a crash, cancel,
expiry, and the validation pass. The real server and kill -9 are in test_batch_crash.py."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from tinyembed.jobs.batches import JobRunner, new_batch_row, plan, decode_create
from tinyembed.jobs.store import Store
from tinyembed.server.protocol import ApiError
from tinyembed.scheduler.runner import DirectRunner, Overloaded

DEADLINE_S = 60.0


def line(cid: str, text, model: str = "tiny", **body) -> bytes:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": model, "input": text, **body}}).encode() + b"\n"


def request_lines(n: int) -> bytes:
    return b"".join(line(f"r{i}", f"text number {i}") for i in range(n))


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


class Recording:
    """The real DirectRunner, with a hook run before each call."""

    def __init__(self, before=None):
        self.inner = DirectRunner(max_batch_tokens=256)
        self.calls: list[dict] = []
        self.before = before
        self.in_flight = self.most_in_flight = 0

    def start(self):
        self.inner.start()

    async def stop(self):
        await self.inner.stop()

    async def embed(self, engine, sequences, *, tier="default", deadline=None, key=None):
        self.calls.append({"tier": tier, "key": key, "tokens": sum(len(s) for s in sequences), "deadline": deadline})
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.before is not None:
                await self.before(len(self.calls))
            return await self.inner.embed(engine, sequences, tier=tier, deadline=deadline, key=key)
        finally:
            self.in_flight -= 1


class Harness:
    def __init__(self, tmp_path, tiny, runner, clock=None, **options):
        self.dir, self.tiny, self.runner, self.options = tmp_path / "data", tiny, runner, options
        self.store = Store(self.dir, **({"clock": clock} if clock else {}))
        self.jobs = None

    def find_engine(self, model):
        if model != "tiny":
            raise ApiError(404, "model_not_found", f"The model '{model}' does not exist.", "model")
        return self.tiny

    def submit(self, data: bytes) -> str:
        f = self.store.add_file([data], "in.jsonl", "batch", None)
        req = decode_create(json.dumps({"input_file_id": f["id"], "endpoint": "/v1/embeddings",
                                        "completion_window": "24h"}).encode())
        return self.store.add_batch(new_batch_row(req, "key-1", self.store.now()))["id"]

    def start(self):
        self.runner.start()
        self.jobs = JobRunner(self.store, self.runner, self.find_engine, max_inputs=2048, max_tokens=300_000,
                              **{"chunk_lines": 4, "piece_tokens": 64, **self.options})
        self.jobs.start()
        self.jobs.wake()

    async def until(self, batch_id: str, predicate) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            batch = await self.store.call(self.store.get_batch, batch_id)
            if predicate(batch):
                return batch
            await asyncio.sleep(0.01)
        raise AssertionError(f"batch never reached the state: {batch}")

    async def finish(self, batch_id: str) -> dict:
        return await self.until(batch_id, lambda b: b["status"] in ("completed", "failed", "expired", "cancelled"))

    async def stop(self):
        await self.jobs.stop()
        await self.runner.stop()

    def lines_of(self, file_id) -> list[dict]:
        if file_id is None:
            return []
        return [json.loads(x) for x in self.store.file_path(file_id).read_bytes().splitlines()]


def vectors_of(lines: list[dict]) -> dict[str, np.ndarray]:
    return {x["custom_id"]: np.array([d["embedding"] for d in x["response"]["body"]["data"]], dtype=np.float32)
            for x in lines}


# -- validation pass ------------------------------------------------------------------------------------

def test_plan_cuts_the_file_into_chunks_that_cover_every_line_once():
    data = b"\n" + request_lines(5) + b"\nnot json\n" + line("r1", "again") + b"\n\n" + line("last", "x").rstrip()
    chunks, total, errors, duplicates = plan(data, chunk_lines=3, chunk_bytes=1 << 20)
    assert total == 8
    assert chunks[0][0] == 0 and chunks[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # contiguous, no gaps or overlaps
    lines = [data[s:e].count(b"{") for s, e, _ in chunks]  # requests per chunk (two braces each)
    assert sum(lines) == 2 * 7
    assert [e["line"] for e in errors] == [8, 9] and errors[0]["code"] == "invalid_json_line"
    assert errors[1]["code"] == "duplicate_custom_id" and duplicates == [9]
    assert [c[2] for c in chunks][:2] == [1, 5]  # line 1 is blank; lines 2-4 fill the first chunk


def test_plan_respects_the_byte_bound():
    chunks, *_ = plan(request_lines(10), chunk_lines=1000, chunk_bytes=250)
    assert len(chunks) > 1


def test_create_request_rules():
    ok = decode_create(b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "24h"}')
    assert ok.input_file_id == "f"
    for body, param in [
        (b'{"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h"}', "endpoint"),
        (b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "1h"}', "completion_window"),
        (b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "24h", "x": 1}', "x"),
        (b'{"endpoint": "/v1/embeddings", "completion_window": "24h"}', "input_file_id"),
    ]:
        with pytest.raises(ApiError) as err:
            decode_create(body)
        assert err.value.status == 400 and err.value.param == param


# -- running --------------------------------------------------------------------------------------------

def test_batch_runs_at_flex_tier_in_bounded_pieces_and_matches_the_engine(tmp_path, tiny):
    async def main():
        # each piece lingers a moment, so that with a fast engine (C kernels) piece 1 is still
        # in flight when piece 2 is sent: the bound below is then reached, never exceeded
        h = Harness(tmp_path, tiny, Recording(before=lambda n: asyncio.sleep(0.02)))
        batch_id = h.submit(request_lines(10) + line("two", ["a", "b"], dimensions=8) + line("b64", "z",
                            encoding_format="base64"))
        h.start()
        batch = await h.finish(batch_id)
        await h.stop()
        return h, batch

    h, batch = asyncio.run(main())
    assert batch["status"] == "completed" and (batch["total"], batch["completed"], batch["failed"]) == (12, 12, 0)
    assert {c["tier"] for c in h.runner.calls} == {"flex"} and {c["key"] for c in h.runner.calls} == {"key-1"}
    assert all(c["deadline"] is None for c in h.runner.calls)
    assert max(c["tokens"] for c in h.runner.calls) <= 64  # piece_tokens
    assert h.runner.most_in_flight == 2  # pieces_in_flight: batch work never floods the queue
    out = h.lines_of(batch["output_file_id"])
    assert [x["custom_id"] for x in out] == [f"r{i}" for i in range(10)] + ["two", "b64"]
    got = vectors_of(out[:11])
    for i in range(10):
        np.testing.assert_allclose(got[f"r{i}"], tiny.embed_texts([f"text number {i}"]), atol=1e-5, rtol=0)
    two = got["two"]
    assert two.shape == (2, 8) and np.allclose(np.linalg.norm(two, axis=1), 1, atol=1e-5)
    assert isinstance(out[11]["response"]["body"]["data"][0]["embedding"], str)  # base64 kept per line
    assert out[0]["response"]["body"]["service_tier"] == "flex"


def test_a_full_queue_delays_the_batch_without_failing_it(tmp_path, tiny):
    async def overloaded_three_times(call):
        if call <= 3:
            raise Overloaded(0.01)

    async def main():
        h = Harness(tmp_path, tiny, Recording(overloaded_three_times))
        batch_id = h.submit(request_lines(6))
        h.start()
        batch = await h.finish(batch_id)
        await h.stop()
        return batch

    batch = asyncio.run(main())
    assert batch["status"] == "completed" and batch["completed"] == 6


def test_resume_after_a_crash_writes_each_custom_id_exactly_once(tmp_path, tiny):
    stuck = asyncio.Event()

    async def hang_after_three_calls(call):
        if call > 3:
            await stuck.wait()  # the process "dies" here, mid-batch

    async def first_life():
        h = Harness(tmp_path, tiny, Recording(hang_after_three_calls))
        batch_id = h.submit(request_lines(40))
        h.start()
        before = await h.until(batch_id, lambda b: b["completed"] >= 4)
        await h.jobs.stop()  # uncommitted work is lost, as in a crash
        h.store.close()
        return batch_id, before

    async def second_life():
        h = Harness(tmp_path, tiny, Recording())
        h.start()
        batch = await h.finish(batch_id)
        await h.stop()
        return h, batch

    batch_id, before = asyncio.run(first_life())
    assert before["status"] == "in_progress" and before["output_file_id"] is None
    h, batch = asyncio.run(second_life())
    assert batch["status"] == "completed" and (batch["completed"], batch["failed"]) == (40, 0)
    out = h.lines_of(batch["output_file_id"])
    assert [x["custom_id"] for x in out] == [f"r{i}" for i in range(40)]  # each once, in input order
    want = tiny.embed_texts([f"text number {i}" for i in range(40)])
    got = np.concatenate(list(vectors_of(out).values()))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_cancel_keeps_finished_lines_and_drops_the_rest(tmp_path, tiny):
    stuck = asyncio.Event()

    async def hang_after_two_calls(call):
        if call > 2:
            await stuck.wait()

    async def main():
        h = Harness(tmp_path, tiny, Recording(hang_after_two_calls), parallel_chunks=1)
        batch_id = h.submit(request_lines(20))
        h.start()
        await h.until(batch_id, lambda b: b["completed"] >= 4)
        await h.store.call(h.store.request_cancel, batch_id)
        h.jobs.cancel(batch_id)
        batch = await h.finish(batch_id)
        await h.jobs.stop()
        return h, batch

    h, batch = asyncio.run(main())
    assert batch["status"] == "cancelled" and batch["cancelling_at"] and batch["cancelled_at"]
    out = h.lines_of(batch["output_file_id"])
    ids = [x["custom_id"] for x in out]
    assert len(ids) == batch["completed"] and len(set(ids)) == len(ids) and 4 <= len(ids) < 20


def test_completion_window_passing_expires_the_rest(tmp_path, tiny):
    clock = Clock()

    async def expire_on_second_call(call):  # chunks of 4 lines, one call each
        if call == 2:
            clock.now += 25 * 3600

    async def main():
        h = Harness(tmp_path, tiny, Recording(expire_on_second_call), clock=clock, parallel_chunks=1, piece_tokens=1000)
        batch_id = h.submit(request_lines(12))
        h.start()
        batch = await h.finish(batch_id)
        await h.stop()
        return h, batch

    h, batch = asyncio.run(main())
    assert batch["status"] == "expired" and batch["expired_at"]
    out, errors = h.lines_of(batch["output_file_id"]), h.lines_of(batch["error_file_id"])
    assert batch["completed"] == len(out) == 8 and batch["failed"] == len(errors) == 4  # the 3rd chunk never ran
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sorted(x["custom_id"] for x in out + errors) == sorted(f"r{i}" for i in range(12))


def test_an_unexpected_runner_error_fails_the_batch_with_a_generic_error(tmp_path, tiny):
    async def boom(call):
        raise RuntimeError("a bug")

    async def main():
        h = Harness(tmp_path, tiny, Recording(boom))
        batch_id = h.submit(request_lines(3))
        h.start()
        batch = await h.finish(batch_id)
        await h.stop()
        return batch

    batch = asyncio.run(main())
    assert batch["status"] == "failed" and batch["failed_at"]
    assert json.loads(batch["errors"])[0]["code"] == "internal_error"
