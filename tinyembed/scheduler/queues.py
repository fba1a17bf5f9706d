"""Tier queues and the batch former: which waiting sequences go into the next batch.

Pure bookkeeping, no asyncio and no threads: continuous.py calls it on the event loop. It owns
one model's waiting work.

- A `Request` is one client call: its sequences, waiting in length order (shortest first, so a
  request's chunks hold similar lengths), each index handed out exactly once.
- Four tiers, best first: priority, default (= "auto"), over-limit (an `auto` request over its
  key's rate limit, see server/ratelimit.py), flex.
- Every waiting request has a rank within its tier, and a batch is formed greedily in rank
  order (a request whose next sequence does not fit is skipped, the rest still considered):
    first chunks, in admission order   (phase 0, ticket = admission number)
    later chunks, round robin          (phase 1, ticket = when it last joined the back)
  A request gives at most `chunk_tokens` per turn and then joins the back of the round robin,
  so a 2048-input request is cut into chunks, and a single text that arrives behind bulk work
  ranks ahead of every later chunk: it goes into the next batch formed.
- A formed batch that is taken back before it runs (continuous.py: a cancellation, a deadline,
  or an arrival ranked ahead of some of its work) gives its sequences back to their requests
  and each request gets back the rank it had: taking back never costs a request its place.
  (It used to: taken-back work queued apart, and `make_room` pushed an older request out of the
  staged batch for a newer one again and again; a long single text then waited as long as short
  ones kept arriving.)
- Aging is counted in batches, not seconds: a default or flex request passed over by
  `aging_batches` batches is "aged", and aged work gets up to `aged_share` of every batch
  before strict tier order applies. Flex therefore always progresses, and takes at most
  `aged_share` of any batch.
- A priority request waits for the batch computing when it arrives, then for its own batch.
  Both stay short: a batch that carries priority work, and every batch formed while priority
  traffic is recent (a priority request admitted within the last `priority_hold_batches`
  batches), takes default/flex work only up to `priority_batch_tokens`. Without priority
  traffic, batches fill to the budget.
- `closed_to(batch)` checks the invariant that ordering gives (see continuous.py's docstring).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left
from collections import deque

import numpy as np

TIERS = ("priority", "default", "over-limit", "flex")
TIER_RANK = {"priority": 0, "default": 1, "auto": 1, "over-limit": 2, "flex": 3}
PRIORITY, DEFAULT, OVER_LIMIT, FLEX = 0, 1, 2, 3
FIRST, LATER = 0, 1  # rank phases: a request's first chunk, its later chunks
ADDED, REFORM, UNCHANGED = "added", "reform", "unchanged"  # what offer() did to a staged batch
COMPACT_EVERY = 256  # batches between sweeps of stale heap entries


class Request:
    """One embed() call. Sequence i's vector lands in out[i] whatever batch computes it."""

    __slots__ = ("sequences", "lengths", "tokens", "tier", "key", "deadline", "admitted",
                 "pending", "queued_tokens", "queued_seqs", "unfinished", "waiting_since",
                 "dropped", "started", "out", "future", "timer", "seen_batch", "batches_waited",
                 "last_launch", "rank", "entry", "violated")

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
        self.waiting_since = 0  # batch number when it took its current rank (the aging clock)
        self.dropped = False
        self.started: float | None = None  # when its first batch was launched
        self.out: np.ndarray | None = None
        self.future = None  # asyncio.Future, set by the scheduler
        self.timer = None  # deadline TimerHandle
        self.seen_batch = 0  # number of the last batch that started before it could join one
        self.batches_waited = 0  # batches that computed before its last one: set when that launches
        self.last_launch = admitted  # when its last batch was launched
        self.rank = (FIRST, 0)  # (phase, ticket): its place in its tier, set by TierQueues.add
        self.entry = None  # id of its live heap entry (older entries are stale)
        self.violated = False  # a launched batch left it out while open to it (counted once)


class Pick:
    """Consecutive picks from one request inside one batch, and the rank they were taken at."""

    __slots__ = ("request", "indices", "tokens", "rank", "since", "aged")

    def __init__(self, request: Request, indices: list[int], tokens: int, rank=(FIRST, 0), since: int = 0,
                 aged: bool = False):
        self.request, self.indices, self.tokens = request, indices, tokens
        self.rank, self.since, self.aged = rank, since, aged

    def key(self) -> tuple:
        """Order of the former: aged work first, then tier, then rank within the tier."""
        return (-1, 0, 0) if self.aged else (self.request.tier, *self.rank)


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

    def tier_limit(self, tier: int) -> int:
        return self.limit if tier == PRIORITY else self.lower_limit

    def has_room(self, tier: int, length: int, max_seqs: int | None) -> bool:
        if max_seqs is not None and self.num_seqs >= max_seqs:
            return False
        return self.tokens + length <= self.tier_limit(tier)


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
        # per tier, (phase, ticket, entry, request) by rank; and (waiting_since, tier, entry, request)
        # over the lower tiers for aging. Entries go stale when a request's rank changes (lazy removal).
        self.heaps: list[list] = [[] for _ in TIERS]
        self.aging: list = []
        self._entries = itertools.count()
        self._admissions = itertools.count()
        self._turns = itertools.count()
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
        req.rank = (FIRST, next(self._admissions))
        self._push(req)

    def drop(self, req: Request) -> None:
        """Forget a request's waiting sequences (its picks must not be in a staged batch)."""
        if req.dropped:
            return
        req.dropped = True
        self.queued_tokens[req.tier] -= req.queued_tokens
        self.queued_seqs[req.tier] -= req.queued_seqs
        req.queued_tokens = req.queued_seqs = 0
        req.pending.clear()
        req.entry = None  # its heap entries are stale now

    def launched(self, batch: FormedBatch) -> None:
        """The batch went to the compute thread: its sequences leave the queue."""
        self.batches_launched += 1
        if self.batches_launched % COMPACT_EVERY == 0:
            self._compact()
        for p in batch.picks:
            req = p.request
            self.queued_tokens[req.tier] -= p.tokens
            self.queued_seqs[req.tier] -= len(p.indices)
            req.queued_tokens -= p.tokens
            req.queued_seqs -= len(p.indices)

    def restore(self, batch: FormedBatch) -> None:
        """Take back a formed batch that did not run: each request gets its sequences back, in
        order, and the rank it had before the batch took them."""
        for p in reversed(batch.picks):
            req = p.request
            if not req.dropped:
                req.pending.extendleft(reversed(p.indices))
                req.rank, req.waiting_since = p.rank, p.since
        for req in {p.request for p in batch.picks if not p.request.dropped}:
            self._push(req)

    @property
    def total_tokens(self) -> int:
        return sum(self.queued_tokens)

    def has_work(self) -> bool:
        return any(self.queued_seqs)

    def waiting(self):
        """Every request with sequences not yet picked, once each (no order)."""
        for heap in self.heaps:
            for _, _, entry, req in heap:
                if entry == req.entry and req.pending and not req.dropped:
                    yield req

    # -- the batch former ----------------------------------------------------------------------
    def form(self, now: float) -> tuple[FormedBatch | None, list[Request]]:
        """The next batch, and the requests found past their deadline or cancelled (dropped here;
        the caller fails them). Order: aged default/flex work (up to aged_share), then each tier
        best first, within a tier by rank (first chunks, then the round robin)."""
        expired: list[Request] = []
        recent = self.batches_launched - self.priority_seen <= self.priority_hold_batches
        lower = self.priority_tokens if self._top(PRIORITY) is not None or recent else self.budget
        batch = FormedBatch(self.budget, lower)
        if self.aged_share > 0:
            self._take_aged(batch, int(lower * self.aged_share), now, expired)
        for tier in range(len(TIERS)):
            self._take_tier(batch, tier, now, expired)
        return (batch if batch.picks else None), expired

    def top_up(self, batch: FormedBatch, req: Request) -> bool:
        """Add a newcomer to a formed, not yet launched batch, as much of it as fits: right when
        it ranks behind everything in the batch (see offer)."""
        return bool(self._take(batch, req, self.budget))

    def offer(self, batch: FormedBatch, req: Request) -> str:
        """A request was admitted while `batch` is staged. Keep the staged batch what form()
        would make now: ADDED (the newcomer joined it), REFORM (it ranks ahead of work in the
        batch that it needs the room of, or the priority cap must now apply: the caller takes
        the batch back and forms it again) or UNCHANGED (it waits for the next batch)."""
        if req.tier == PRIORITY and batch.lower_limit > self.priority_tokens and batch.worst_tier > PRIORITY:
            return REFORM  # lower-tier work in it must shrink to the priority cap
        key = (req.tier, *req.rank)
        behind = any(not p.aged and p.key() > key for p in batch.picks)
        need, count = 0, 0
        for i in req.pending:  # its first chunk, as _take cuts it
            if count and need + req.lengths[i] > self.chunk_tokens:
                break
            need, count = need + req.lengths[i], count + 1
        fits = batch.tokens + need <= batch.tier_limit(req.tier) and (
            self.max_seqs is None or batch.num_seqs + count <= self.max_seqs)
        if behind and not fits:
            return REFORM
        return ADDED if self.top_up(batch, req) else UNCHANGED

    def closed_to(self, batch: FormedBatch, now: float) -> list[Request]:
        """The invariant, checked as `batch` launches: the waiting requests it left out although
        it had room for their next sequence once the work ranked ahead of them was in. Should
        always be []; each request is reported once (Request.violated)."""
        picks = sorted((p.key(), p.tokens, len(p.indices)) for p in batch.picks)
        keys = [k for k, _, _ in picks]
        ahead_tokens, ahead_seqs = [0], [0]
        for _, tokens, seqs in picks:
            ahead_tokens.append(ahead_tokens[-1] + tokens)
            ahead_seqs.append(ahead_seqs[-1] + seqs)
        inside = batch.requests()
        found = []
        for req in self.waiting():
            if req in inside or req.violated or self._gone(req, now):
                continue
            at = bisect_left(keys, (req.tier, *req.rank))
            tokens, seqs = ahead_tokens[at], ahead_seqs[at]
            if self.max_seqs is not None and seqs >= self.max_seqs:
                continue
            if tokens and tokens + req.lengths[req.pending[0]] > batch.tier_limit(req.tier):
                continue
            req.violated = True
            found.append(req)
        return found

    def _push(self, req: Request) -> None:
        """(Re)enter req at its current rank; any older entry of it goes stale."""
        if req.dropped or not req.pending:
            return
        req.entry = entry = next(self._entries)
        heapq.heappush(self.heaps[req.tier], (*req.rank, entry, req))
        if req.tier != PRIORITY and self.aged_share > 0:
            heapq.heappush(self.aging, (req.waiting_since, req.tier, entry, req))

    def _compact(self) -> None:
        """Drop stale entries (they leave lazily, from the top; deep ones could pile up)."""
        def live(entry) -> bool:
            req = entry[-1]
            return entry[-2] == req.entry and bool(req.pending) and not req.dropped
        for heap in (*self.heaps, self.aging):
            heap[:] = [e for e in heap if live(e)]
            heapq.heapify(heap)

    def _top(self, tier: int) -> Request | None:
        """The best-ranked live request of a tier (stale entries at the top are dropped)."""
        heap = self.heaps[tier]
        while heap:
            _, _, entry, req = heap[0]
            if entry == req.entry and req.pending and not req.dropped:
                return req
            heapq.heappop(heap)
        return None

    @staticmethod
    def _gone(req: Request, now: float) -> bool:
        return (req.deadline is not None and req.deadline <= now) or (req.future is not None and req.future.done())

    def _expired(self, req: Request, now: float, expired: list[Request]) -> bool:
        """Past its deadline, or its future is already done (cancelled: the client is gone)."""
        if self._gone(req, now):
            expired.append(req)
            self.drop(req)
            return True
        return False

    def _take(self, batch: FormedBatch, req: Request, quantum: int, aged: bool = False) -> int:
        """Move up to `quantum` tokens (at least one sequence) of req's pending indices into
        the batch, as many as fit. A sequence longer than the whole budget runs alone. The
        request then ranks at the back of the round robin."""
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
            batch.picks.append(Pick(req, taken, tokens, req.rank, req.waiting_since, aged))
            batch.worst_tier = max(batch.worst_tier, req.tier)
            req.rank, req.waiting_since = (LATER, next(self._turns)), self.batches_launched
            self._push(req)
        return tokens

    def _take_tier(self, batch: FormedBatch, tier: int, now: float, expired: list[Request]) -> None:
        """Greedy in rank order: each request's next chunk in turn; one whose next sequence does
        not fit is skipped (it keeps its rank) and the rest still considered, until full."""
        heap, skipped = self.heaps[tier], []
        while heap and not self._full(batch, tier):
            _, _, entry, req = heapq.heappop(heap)
            if entry != req.entry or req.dropped or not req.pending:
                continue  # stale
            req.entry = None
            if self._expired(req, now, expired):
                continue
            if not self._take(batch, req, self.chunk_tokens):  # (taken: back in the heap, new rank)
                skipped.append(req)
        for req in skipped:
            self._push(req)

    def _take_aged(self, batch: FormedBatch, budget: int, now: float, expired: list[Request]) -> None:
        """Serve requests passed over for aging_batches batches, oldest first, up to budget."""
        threshold = self.batches_launched - self.aging_batches
        aged_tokens = 0
        while aged_tokens < budget and self.aging:
            since, _, entry, req = self.aging[0]
            if entry != req.entry or req.dropped or not req.pending:
                heapq.heappop(self.aging)  # stale
                continue
            if since > threshold:
                return
            if self._expired(req, now, expired):
                continue
            took = self._take(batch, req, min(self.chunk_tokens, budget - aged_tokens), aged=True)
            if not took:
                return
            aged_tokens += took

    def _full(self, batch: FormedBatch, tier: int) -> bool:
        if self.max_seqs is not None and batch.num_seqs >= self.max_seqs:
            return True
        return batch.tokens >= batch.tier_limit(tier)
