"""API keys: where they come from, and a constant-time check of a request's Bearer token.

No keys configured means the server is open (its default bind is 127.0.0.1). A key is never
logged: the checker hands back a short fingerprint to use as the rate-limit and log identity.

/metrics shows usage per key, and anyone who may read /metrics sees those labels, so a label must
not let a reader test guesses offline (an unsalted hash of a short key falls to a dictionary in
under a second). `KeyLabels` names a key (or project, or keyless client) by an HMAC under a
per-server secret: random at each start unless the operator gives one (--metrics-label-secret),
so labels stay stable across restarts only when the operator wants them to.

A key may name a project: `KEY:PROJECT` (flag, file line or TINYEMBED_API_KEYS entry; the last
':' separates them, so a key that itself contains ':' is written `KEY:` or `KEY:PROJECT`). Files
and batches belong to their creator's project, or to the key itself when it has none (its
fingerprint): every key of a project sees the project's objects, no other key sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
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


class KeyLabels:
    """The identity of a requester as /metrics shows it: `key-`, `project-` or `client-` followed
    by 12 hex digits of HMAC-SHA256(secret, identity). Without the secret a label says nothing."""

    def __init__(self, secret: str | None = None):
        self._secret = secret.encode("utf-8") if secret else os.urandom(32)
        self._cache: dict[str, str] = {}

    def __call__(self, name: str | None) -> str | None:
        if name is None:
            return None
        label = self._cache.get(name)
        if label is None:
            kind = "project" if name.startswith("project:") else "client" if name.startswith("client:") else "key"
            label = f"{kind}-{hmac.new(self._secret, name.encode('utf-8', 'surrogateescape'), hashlib.sha256).hexdigest()[:12]}"
            if len(self._cache) < 10_000:
                self._cache[name] = label
        return label


PROJECT_NAME = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")


def split_key(spec: str) -> tuple[str, str | None]:
    """'KEY:PROJECT' -> (KEY, PROJECT); 'KEY' or 'KEY:' -> (KEY, None)."""
    key, sep, project = spec.rpartition(":")
    if not sep or not key or not PROJECT_NAME.match(project):
        return spec, None
    return key, project or None


class ApiKeys:
    def __init__(self, keys: tuple[str, ...] | list[str]):
        pairs = dict(split_key(spec) for spec in keys)  # a key given twice: its last project wins
        # Compare digests, not the keys: equal lengths, and every key is compared every time,
        # so neither the length nor the position of a match leaks through timing.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in pairs]
        self._names = [fingerprint(k) for k in pairs]
        self._owners = {fingerprint(k): (f"project:{p}" if p else fingerprint(k)) for k, p in pairs.items()}

    def owner(self, name: str | None) -> str | None:
        """Who owns what this key creates: its project, else the key's fingerprint; None when
        no keys are configured (objects are then everyone's, as without keys they always were)."""
        if not self.enabled or name is None:
            return None
        return self._owners.get(name)

    def owners(self, name: str | None) -> tuple[str, ...] | None:
        """The owners whose objects this key may see (None: no filter, keys are off). A key that
        joined a project later still sees what it created on its own before."""
        owner = self.owner(name)
        if owner is None:
            return None if not self.enabled else ()
        return tuple(dict.fromkeys((owner, name)))

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
