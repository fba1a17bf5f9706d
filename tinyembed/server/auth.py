"""API keys: where they come from, and a constant-time check of a request's Bearer token.

No keys configured means the server is open (its default bind is 127.0.0.1). A key is never
logged: the checker hands back a short fingerprint to use as the rate-limit and log identity.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

ENV_KEYS = "TINYEMBED_API_KEYS"


def read_key_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped."""
    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def keys_from_env(environ=os.environ) -> list[str]:
    return [k.strip() for k in environ.get(ENV_KEYS, "").split(",") if k.strip()]


def fingerprint(key: str) -> str:
    """A stable, non-reversible name for a key: safe in logs and metrics."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    def __init__(self, keys: tuple[str, ...] | list[str]):
        # Compare digests, not the keys: equal lengths, and every key is compared every time,
        # so neither the length nor the position of a match leaks through timing.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in dict.fromkeys(keys)]
        self._names = [fingerprint(k) for k in dict.fromkeys(keys)]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """The Authorization header -> the matching key's fingerprint, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        match = None
        for digest, name in zip(self._digests, self._names):
            if hmac.compare_digest(digest, presented):
                match = name
        return match
