"""Bearer tokens for the REST API (pure).

A token is ``chk_<id>_<secret>``: ``id`` (12 hex digits) names it in listings and logs,
``secret`` is 32 random bytes (base64url). The manager stores only the SHA-256 of the whole
token — a token has 256 bits of entropy, so a slow password hash would add nothing — and
compares in constant time. A token is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cargohold.errors import Unauthenticated

PREFIX = "chk_"
_FORMAT = re.compile(r"^chk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class NewToken:
    id: str
    token: str  # shown once
    digest: str  # what is stored


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> NewToken:
    tid = secrets.token_hex(6)
    token = f"{PREFIX}{tid}_{secrets.token_urlsafe(32)}"
    return NewToken(tid, token, digest(token))


def token_id(token: str) -> str:
    """The id of a well-formed token; Unauthenticated (without echoing it) otherwise."""
    m = _FORMAT.match(token)
    if m is None:
        raise Unauthenticated("malformed bearer token")
    return m.group(1)


def matches(token: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)
