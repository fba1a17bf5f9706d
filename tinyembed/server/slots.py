"""Who gets a connection slot when the cap (`--max-connections`) is reached.

Idle sockets must never lock everyone out: a liveness probe has to answer 200 even while
thousands of clients hold connections open and send nothing. When a new connection arrives at
the cap:
1. the oldest connection that never sent a byte is closed to make room (such connections also
   have a short deadline of their own, `HttpLimits.first_byte_timeout`);
2. else the oldest keep-alive connection waiting between requests is closed (HTTP lets a server
   close an idle keep-alive connection at any time; clients reconnect);
3. else every connection is busy with a request: the new one is admitted *limited*, into one of
   `PROBE_SLOTS` slots above the cap, where it may ask only for /health or /ready (anything else
   gets 503 and the connection closes);
4. else it gets 503 "Too many open connections" and is closed.
A limited connection that sends nothing is itself the first to go (rule 1), so an attacker
opening connections cannot keep the probe slots either.

The cap only works below the process's open-file limit: past it accept() fails (EMFILE) and no
one, probes included, gets in. `fit_fd_limit` raises the soft limit to what the cap needs (the
hard limit allows that without privileges) or, where the hard limit is lower, lowers the cap.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

try:
    import resource
except ImportError:  # not on POSIX: nothing to fit
    resource = None

log = logging.getLogger("tinyembed.server")
FD_HEADROOM = 64  # descriptors besides client sockets: listening socket, model files, sqlite, pipes

PROBE_SLOTS = 32
PROBE_PATHS = frozenset({"/health", "/ready"})

ADMIT, LIMITED, REFUSE = "admit", "limited", "refuse"


def fit_fd_limit(cap: int, probe_slots: int = PROBE_SLOTS) -> int:
    """Raise the soft open-file limit so `cap` connections (+ probe slots + headroom) fit;
    -> the cap that fits (lower than `cap` only when the hard limit is)."""
    if resource is None:
        return cap
    needed = cap + probe_slots + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return cap
    fitted = max(1, soft - probe_slots - FD_HEADROOM)
    log.warning("the open-file limit is %d (hard limit %s): --max-connections %d lowered to %d", soft, hard, cap,
                fitted)
    return fitted


class Slots:
    def __init__(self, cap: int, probe_slots: int = PROBE_SLOTS):
        self.cap = cap
        self.probe_slots = probe_slots
        self.open: set = set()
        self.fresh: OrderedDict = OrderedDict()  # connected, nothing received yet; oldest first
        self.idle: OrderedDict = OrderedDict()  # kept alive between requests; oldest first
        self.evicted: set = set()  # closed to make room, not yet gone
        self.limited: set = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.open)

    def arrive(self, conn) -> str:
        """A new connection: ADMIT, LIMITED or REFUSE (see the module docstring). May close an
        older connection (its `evict()` is called)."""
        self.open.add(conn)
        if len(self.open) - len(self.evicted) - len(self.limited) <= self.cap:
            self.fresh[conn] = None
            return ADMIT
        victim = next(iter(self.fresh), None) or next(iter(self.idle), None)
        if victim is not None:  # the newcomer takes the victim's kind of slot
            kind = LIMITED if victim in self.limited else ADMIT
            self._forget(victim)
            self.limited.discard(victim)
            self.evicted.add(victim)
            self.evictions += 1
            victim.evict()
            if kind == LIMITED:
                self.limited.add(conn)
            self.fresh[conn] = None
            return kind
        if len(self.limited) < self.probe_slots:
            self.limited.add(conn)
            self.fresh[conn] = None
            return LIMITED
        return REFUSE

    def active(self, conn) -> None:
        """`conn` sent bytes: it is neither fresh nor idle."""
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)

    def rest(self, conn) -> None:
        """`conn` answered everything and waits for its next request (keep-alive)."""
        if conn in self.open and conn not in self.evicted:
            self.idle[conn] = None
            self.idle.move_to_end(conn)

    def gone(self, conn) -> None:
        self._forget(conn)
        self.open.discard(conn)
        self.evicted.discard(conn)
        self.limited.discard(conn)

    def _forget(self, conn) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)
