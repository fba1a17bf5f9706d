"""Tier queues and the batch former: which waiting sequences go into the next batch.

Pure bookkeeping, no asyncio and no threads: scheduler.py calls it on the event loop. It owns
one model's waiting work.

- A `Request` is one client call: its sequences, waiting in length order (shortest first, so a
  request's chunks hold similar lengths), each index handed out exactly once.
- Four tiers, best first: priority, default (= "auto"), over-limit (an `auto` request over its
  key's rate limit, see server/ratelimit.py), flex. Each tier is a round-robin deque of
  requests: a request gives at most `chunk_tokens` per turn, then goes to the back, so a
  2048-input request is cut into chunks. Requests that have not had a turn yet wait in their
  tier's `fresh` deque, served before the round robin: a single text that arrives behind
  bulk work gets into the next batch formed, however many bulk requests are turning.
- Aging is counted in batches, not seconds: a default or flex request passed over by
  `aging_batches` batches is "aged", and aged work gets up to `aged_share` of every batch
  before strict tier order applies. Flex therefore always progresses (at worst one chunk per
  request every `aging_batches` batches), and takes at most `aged_share` of any batch.
- A priority request waits for the batch computing when it arrives, then for its own batch.
  Both stay short: a batch that carries priority work, and every batch formed while priority
  traffic is recent (a priority request admitted within the last `priority_hold_batches`
  batches), takes default/flex work only up to `priority_batch_tokens`. Without priority
  traffic, batches fill to `max_batch_tokens`.
- A formed batch that is taken back before it runs (see scheduler.py: a better-tier arrival or
  a cancellation) returns its picks to its tiers' `carry`, served first within the tier next time.
- Order within a tier: carry, fresh requests' first chunks, sequences `evicted` from a staged
  batch to make room for a newcomer (TierQueues.make_room), then the round robin.
"""

from __future__ import annotations

from collections import deque

import numpy as np

TIERS = ("priority", "default", "over-limit", "flex")
TIER_RANK = {"priority": 0, "default": 1, "auto": 1, "over-limit": 2, "flex": 3}
PRIORITY, DEFAULT, OVER_LIMIT, FLEX = 0, 1, 2, 3


class Request:
    """One embed() call. Sequence i's vector lands in out[i] whatever batch computes it."""

    __slots__ = ("sequences", "lengths", "tokens", "tier", "key", "deadline", "admitted",
                 "pending", "queued_tokens", "queued_seqs", "unfinished", "waiting_since",
                 "dropped", "started", "out", "future", "timer", "seen_batch", "batches_waited",
                 "last_launch")

    def __init__(self, sequences: list[np.ndarray], tier: int, key: str | None,
                 deadline: float | None, admitted: float):
        self.sequences = sequences
        self.lengths = [len(s) for s in sequences]
        self.tokens = sum(self.lengths)
        self.tier = tier
        self.key = key
        self.deadline = deadline  # time.monotonic() based, or None
        self.admitted = admitted
        # indices not yet picked, shortest first (stable: equal lengths keep input order)
        self.pending = deque(sorted(range(len(sequences)), key=self.lengths.__getitem__))
        self.queued_tokens = self.tokens  # picked-or-not, but not launched yet
        self.queued_seqs = len(sequences)
        self.unfinished = len(sequences)  # not yet computed
        self.waiting_since = 0  # batch number when it last joined the back of its deque
        self.dropped = False
        self.started: float | None = None  # when its first batch was launched
        self.out: np.ndarray | None = None
        self.future = None  # asyncio.Future, set by the scheduler
        self.timer = None  # deadline TimerHandle
        self.seen_batch = 0  # number of the last batch that started before it could join one
        self.batches_waited = 0  # batches that computed before its last one: set when that launches
        self.last_launch = admitted  # when its last batch was launched


class Pick:
    """Consecutive picks from one request inside one batch."""

    __slots__ = ("request", "indices", "tokens")

    def __init__(self, request: Request, indices: list[int], tokens: int):
        self.request, self.indices, self.tokens = request, indices, tokens


class FormedBatch:
    """A batch's contents in order: sequence j of the batch is picks[...] flattened."""

    def __init__(self, limit: int, lower_limit: int):
        self.picks: list[Pick] = []
        self.tokens = 0
        self.num_seqs = 0
        self.worst_tier = PRIORITY
        self.limit = limit  # token budget for priority work
        self.lower_limit = lower_limit  # token budget once default/flex work is added
        self.capped = lower_limit < limit  # lower tiers held to priority_batch_tokens
        self.packed = None  # engine Batch, set by the scheduler

    def requests(self) -> set[Request]:
        return {p.request for p in self.picks}

    def sequences(self) -> list[np.ndarray]:
        return [p.request.sequences[i] for p in self.picks for i in p.indices]

    def has_room(self, tier: int, length: int, max_seqs: int | None) -> bool:
        if max_seqs is not None and self.num_seqs >= max_seqs:
            return False
        return self.tokens + length <= (self.limit if tier == PRIORITY else self.lower_limit)


class TierQueues:
    def __init__(self, max_batch_tokens: int = 16384, max_batch_sequences: int | None = None,
                 priority_batch_tokens: int | None = None, chunk_tokens: int | None = None,
                 aging_batches: int = 8, aged_share: float = 0.25, priority_hold_batches: int = 8):
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        if max_batch_sequences is not None and max_batch_sequences < 1:
            raise ValueError("max_batch_sequences must be >= 1 (or None for no limit)")
        self.max_tokens = max_batch_tokens
        self.max_seqs = max_batch_sequences
        self._priority_setting, self._chunk_setting = priority_batch_tokens, chunk_tokens
        self.set_budget(max_batch_tokens)
        self.aging_batches = max(1, aging_batches)
        self.priority_hold_batches = max(0, priority_hold_batches)
        self.priority_seen = -1 - self.priority_hold_batches  # batches_launched at the last priority arrival
        self.aged_share = min(max(aged_share, 0.0), 1.0)
        self.queues: list[deque[Request]] = [deque() for _ in TIERS]  # had a turn, want more
        self.fresh: list[deque[Request]] = [deque() for _ in TIERS]  # no turn yet: served first
        self.carry: list[deque[Pick]] = [deque() for _ in TIERS]
        self.evicted: list[deque[Pick]] = [deque() for _ in TIERS]
        self.queued_tokens = [0] * len(TIERS)  # admitted, not launched (staged batch included)
        self.queued_seqs = [0] * len(TIERS)
        self.batches_launched = 0  # the aging clock

    def set_budget(self, tokens: int) -> None:
        """Tokens the next batches may hold (scheduler/budget.py: set by time), never above
        max_batch_tokens. Round-robin chunks and the priority cap follow it unless configured."""
        self.budget = max(1, min(tokens, self.max_tokens))
        self.priority_tokens = min(self.budget, self._priority_setting or max(1, self.budget // 4))
        self.chunk_tokens = self._chunk_setting or max(1, self.budget // 8)

    # -- admission and removal -----------------------------------------------------------------
    def add(self, req: Request) -> None:
        if req.tier == PRIORITY:
            self.priority_seen = self.batches_launched
        self.queued_tokens[req.tier] += req.tokens
        self.queued_seqs[req.tier] += len(req.sequences)
        req.waiting_since = self.batches_launched
        self.fresh[req.tier].append(req)

    def drop(self, req: Request) -> None:
        """Forget a request's waiting sequences (its picks must not be in a staged batch)."""
        if req.dropped:
            return
        req.dropped = True
        self.queued_tokens[req.tier] -= req.queued_tokens
        self.queued_seqs[req.tier] -= req.queued_seqs
        req.queued_tokens = req.queued_seqs = 0
        req.pending.clear()
        for store in (self.carry, self.evicted):
            if any(p.request is req for p in store[req.tier]):
                store[req.tier] = deque(p for p in store[req.tier] if p.request is not req)
        # a dropped request left in a deque is skipped (and removed) when reached

    def launched(self, batch: FormedBatch) -> None:
        """The batch went to the compute thread: its sequences leave the queue."""
        self.batches_launched += 1
        for p in batch.picks:
            req = p.request
            self.queued_tokens[req.tier] -= p.tokens
            self.queued_seqs[req.tier] -= len(p.indices)
            req.queued_tokens -= p.tokens
            req.queued_seqs -= len(p.indices)

    def restore(self, batch: FormedBatch) -> None:
        """Take back a formed batch that did not run: its picks are served first next time."""
        for tier in range(len(TIERS)):
            picks = [p for p in batch.picks if p.request.tier == tier and not p.request.dropped]
            self.carry[tier].extendleft(reversed(picks))

    @property
    def total_tokens(self) -> int:
        return sum(self.queued_tokens)

    def has_work(self) -> bool:
        return any(self.queued_seqs)

    # -- the batch former ----------------------------------------------------------------------
    def form(self, now: float) -> tuple[FormedBatch | None, list[Request]]:
        """The next batch, and the requests found past their deadline or cancelled (dropped here;
        the caller fails them). Order: aged default/flex work (up to aged_share), then priority, then
        default, then flex; within a tier carried-back picks, then round-robin chunks."""
        expired: list[Request] = []
        has_priority = bool(self.carry[PRIORITY] or self.evicted[PRIORITY]) or any(
            r.pending for q in (self.fresh[PRIORITY], self.queues[PRIORITY]) for r in q)
        recent = self.batches_launched - self.priority_seen <= self.priority_hold_batches
        lower = self.priority_tokens if has_priority or recent else self.budget
        batch = FormedBatch(self.budget, lower)
        if self.aged_share > 0:
            self._take_aged(batch, int(lower * self.aged_share), now, expired)
        for tier in range(len(TIERS)):
            self._take_carry(batch, self.carry, tier, now, expired)
            self._take_round_robin(batch, self.fresh[tier], tier, now, expired)
            self._take_carry(batch, self.evicted, tier, now, expired)
            self._take_round_robin(batch, self.queues[tier], tier, now, expired)
        return (batch if batch.picks else None), expired

    def top_up(self, batch: FormedBatch, req: Request) -> bool:
        """Add a newcomer to a formed, not yet launched batch that has room for it: cheaper than
        forming the batch again. The caller checks that the newcomer's tier may join it."""
        return bool(self._take(batch, req, self.budget))  # (a fully taken req leaves its deque lazily)

    def make_room(self, batch: FormedBatch, req: Request) -> bool:
        """Fair sharing: a newcomer that does not fit a formed, not yet launched batch takes
        the place of the tail of the largest share of one other request of its tier or a worse
        one, so that it waits behind at most the batch computing. The evicted sequences go to
        their tier's `evicted` deque (in the next batch, after newcomers' first chunks).
        -> True if the newcomer's first chunk now fits."""
        need, count = 0, 0
        for i in req.pending:  # its first chunk, as _take would cut it
            if count and need + req.lengths[i] > self.chunk_tokens:
                break
            need, count = need + req.lengths[i], count + 1
        shares: dict[Request, int] = {}
        for p in batch.picks:
            if p.request.tier >= req.tier and p.request is not req:
                shares[p.request] = shares.get(p.request, 0) + p.tokens
        if not shares:
            return False
        victim = max(shares, key=shares.__getitem__)
        limit = batch.limit if req.tier == PRIORITY else batch.lower_limit
        excess_tokens = batch.tokens + need - limit
        excess_seqs = batch.num_seqs + count - self.max_seqs if self.max_seqs is not None else 0
        if shares[victim] <= need or excess_tokens >= shares[victim]:
            return False  # evicting would take all of a request's share, or not be enough
        evicted: list[Pick] = []
        for k in range(len(batch.picks) - 1, -1, -1):
            if excess_tokens <= 0 and excess_seqs <= 0:
                break
            pick = batch.picks[k]
            if pick.request is not victim:
                continue
            keep = len(pick.indices)
            while keep > 0 and (excess_tokens > 0 or excess_seqs > 0):
                keep -= 1
                excess_tokens -= victim.lengths[pick.indices[keep]]
                excess_seqs -= 1
            gone = pick.indices[keep:]
            gone_tokens = sum(victim.lengths[i] for i in gone)
            evicted.append(Pick(victim, gone, gone_tokens))
            batch.tokens -= gone_tokens
            batch.num_seqs -= len(gone)
            if keep:
                batch.picks[k] = Pick(victim, pick.indices[:keep], pick.tokens - gone_tokens)
            else:
                del batch.picks[k]
        self.evicted[victim.tier].extendleft(evicted)  # collected back to front: extendleft restores order
        batch.worst_tier = max((p.request.tier for p in batch.picks), default=PRIORITY)
        return self.top_up(batch, req)

    def _enqueue(self, req: Request) -> None:
        req.waiting_since = self.batches_launched
        self.queues[req.tier].append(req)

    def _expired(self, req: Request, now: float, expired: list[Request]) -> bool:
        """Past its deadline, or its future is already done (cancelled: the client is gone)."""
        if (req.deadline is not None and req.deadline <= now) or (req.future is not None and req.future.done()):
            expired.append(req)
            self.drop(req)
            return True
        return False

    def _take(self, batch: FormedBatch, req: Request, quantum: int) -> int:
        """Move up to `quantum` tokens (at least one sequence) of req's pending indices into
        the batch, as many as fit. A sequence longer than the whole budget runs alone."""
        taken: list[int] = []
        tokens = 0
        pending, lengths = req.pending, req.lengths
        while pending:
            length = lengths[pending[0]]
            if taken and tokens + length > quantum:
                break
            if not batch.has_room(req.tier, length, self.max_seqs) and (batch.picks or taken):
                break
            taken.append(pending.popleft())
            tokens += length
            batch.tokens += length
            batch.num_seqs += 1
        if taken:
            batch.picks.append(Pick(req, taken, tokens))
            batch.worst_tier = max(batch.worst_tier, req.tier)
        return tokens

    def _take_carry(self, batch: FormedBatch, store: list[deque[Pick]], tier: int, now: float,
                    expired: list[Request]) -> None:
        """Picks taken back from a formed batch (store: self.carry or self.evicted), in order."""
        carry = store[tier]
        while carry:
            pick = carry[0]
            req = pick.request
            if req.dropped or self._expired(req, now, expired):
                carry = store[tier]  # drop() may have rebuilt it
                if carry and carry[0] is pick:
                    carry.popleft()
                continue
            fit, tokens = [], 0
            for i in pick.indices:
                length = req.lengths[i]
                if not batch.has_room(tier, length, self.max_seqs) and (batch.picks or fit):
                    break
                fit.append(i)
                tokens += length
                batch.tokens += length
                batch.num_seqs += 1
            if fit:
                batch.picks.append(Pick(req, fit, tokens))
                batch.worst_tier = max(batch.worst_tier, tier)
            if len(fit) < len(pick.indices):
                carry[0] = Pick(req, pick.indices[len(fit):], pick.tokens - tokens)
                return  # the batch is full for this tier
            carry.popleft()

    def _take_round_robin(self, batch: FormedBatch, queue: deque, tier: int, now: float,
                          expired: list[Request]) -> None:
        """A chunk per request in turn; one that wants more goes to the back of its tier's deque."""
        skipped: list[Request] = []  # did not fit; they keep their place at the front
        while queue and len(skipped) < 8:
            progressed = False
            for _ in range(len(queue)):
                req = queue.popleft()
                if req.dropped or not req.pending or self._expired(req, now, expired):
                    continue  # leaves the deque
                if self._take(batch, req, self.chunk_tokens):
                    progressed = True
                    if req.pending:
                        self._enqueue(req)
                else:
                    skipped.append(req)
                    if len(skipped) >= 8:
                        break
                if self._full(batch, tier):
                    break
            if not progressed or self._full(batch, tier):
                break
        queue.extendleft(reversed(skipped))

    def _take_aged(self, batch: FormedBatch, budget: int, now: float, expired: list[Request]) -> None:
        """Serve requests passed over for aging_batches batches, oldest first, up to budget."""
        threshold = self.batches_launched - self.aging_batches
        aged_tokens = 0
        # best tier first (default wins ties), the fresh deque before the turning one
        lower_tiers = [q for tier in range(DEFAULT, len(TIERS)) for q in (self.fresh[tier], self.queues[tier])]
        while aged_tokens < budget:
            for queue in lower_tiers:  # drop dead entries at the fronts
                while queue and (queue[0].dropped or not queue[0].pending):
                    queue.popleft()
            candidates = [q for q in lower_tiers if q and q[0].waiting_since <= threshold]
            if not candidates:
                return
            queue = min(candidates, key=lambda q: q[0].waiting_since)  # default wins ties
            req = queue[0]
            if self._expired(req, now, expired):
                continue
            took = self._take(batch, req, min(self.chunk_tokens, budget - aged_tokens))
            if not took:
                return
            aged_tokens += took
            queue.popleft()
            if req.pending:
                self._enqueue(req)

    def _full(self, batch: FormedBatch, tier: int) -> bool:
        if self.max_seqs is not None and batch.num_seqs >= self.max_seqs:
            return True
        return batch.tokens >= (batch.limit if tier == PRIORITY else batch.lower_limit)
