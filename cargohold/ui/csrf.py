"""The console's form tokens against cross-site request forgery (pure).

Every page carries a token bound to the browser's session (its session cookie, or the
identity of a certificate or a ``--plaintext`` manager's anonymous admin); every POST must
send it back (a hidden form field, or htmx's ``X-CSRF-Token`` header) and come from the
console's own origin. The session cookie is SameSite=Strict besides: a request another
site makes carries no cookie at all. The key is the manager process's own (random at
start): a manager's restart makes a page's token stale (reload the page).
Called by session.py; tested in tests/unit/ui/test_csrf.py.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

HEADER = "x-csrf-token"
FIELD = "csrf"


def new_key() -> bytes:
    return secrets.token_bytes(32)


def token_for(key: bytes, session: str) -> str:
    """The form token of ``session`` (what identifies the browser's session)."""
    return hmac.new(key, b"cargohold-ui-csrf\0" + session.encode(), hashlib.sha256).hexdigest()


def valid(key: bytes, session: str, presented: str | None) -> bool:
    """``presented`` is ``session``'s token (compared in constant time)."""
    if not presented:
        return False
    return hmac.compare_digest(token_for(key, session), presented)


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """A POST came from a page of this host: its ``Origin`` (or, without one, its
    ``Referer``) names ``host`` (the request's Host header). Neither header: allowed (old
    clients and tools send none; the token still has to match)."""
    if not host:
        return False
    source = origin if origin and origin != "null" else referer
    if origin == "null":
        return False
    if not source:
        return True
    return urlsplit(source).netloc.lower() == host.lower()
