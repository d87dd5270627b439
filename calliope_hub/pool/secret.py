"""The claim secrets, derived so that only the hub and the one task know a task's secret.

Standard library only: the launcher runs this inside the user's image.

- The **pool key** of a (hub, service, size) is derived from a secret only the hubs hold
  (JupyterHub's cookie secret, shared by an HA pair), so every hub of a deployment derives
  the same key across restarts without reading it back from SSM (the hub's role has no
  ssm:GetParameter). The keeper writes it to a SecureString that the pool's task definition
  names in `secrets`: the ECS agent hands it to the launcher, DescribeTasks never shows it.
- A task's **claim secret** is HMAC(pool key, task nonce). The nonce rides in the RunTask
  overrides and is public; the secret is not. One task's secret, seen on the wire when it
  was claimed, claims no other task.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: where the launcher finds its pool key (container `secrets`) and its nonce (RunTask overrides)
KEY_VARIABLE = "CALLIOPE_POOL_KEY"
NONCE_VARIABLE = "CALLIOPE_POOL_NONCE"
#: the header a claim carries its secret in
AUTH_SCHEME = "Bearer"


def pool_key(master: bytes, hub_id: str, service: str, size: str) -> str:
    """The pool's key: the same for every hub holding `master`, different for every pool."""
    if len(master) < 16:
        raise ValueError("the pool's master secret must be at least 16 bytes")
    label = "\x1f".join(("calliope-pool-key/v1", hub_id, service, size)).encode()
    return hmac.new(master, label, hashlib.sha256).hexdigest()


def new_nonce() -> str:
    """A fresh, public, per-task value (128 bits)."""
    return secrets.token_hex(16)


def claim_secret(key: str, nonce: str) -> str:
    """The secret that claims the task started with `nonce`."""
    return hmac.new(key.encode(), ("claim/v1\x1f" + nonce).encode(), hashlib.sha256).hexdigest()


def secret_matches(key: str, nonce: str, presented: str) -> bool:
    """Constant-time comparison of a presented secret with the task's own."""
    return hmac.compare_digest(claim_secret(key, nonce).encode(), presented.encode())
