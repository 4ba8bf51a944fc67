"""Who is using the console, and whether they may: a browser's session.

A browser signs in on /ui/login with a bearer token (``cargohold token create``, the same
tokens the API takes); the manager checks it against the state store and keeps it in a
cookie the page's scripts cannot read (HttpOnly, SameSite=Strict, Secure over HTTPS, path
/ui). Every request is authenticated again from that cookie, so a deleted or expired token
ends the session at once. Without the cookie a request is authenticated as the API does it
(control/auth.py: a client certificate, an ``Authorization`` header; a ``--plaintext``
manager's anonymous admin).

Every console route declares the permission it needs (``viewer(Permission.X)``, the same
permissions as the API's: security/policy.py), which ``auth.add_security`` checks is there;
the route itself answers a visitor without a session with the login page and one without
the permission with 403. POSTs also need the session's form token (csrf.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from cargohold.control.auth import ANONYMOUS_ADMIN, Auth, caller
from cargohold.errors import Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission, allowed
from cargohold.ui import csrf

COOKIE = "cargohold_session"
PATH = "/ui"
MAX_AGE = 12 * 3600  # the cookie's life; the token's own expiry still applies


@dataclass
class Viewer:
    """The request's user (None: nobody signed in) and what the route needs."""

    ident: Identity | None
    need: Permission
    session: str = ""  # what the CSRF token is bound to
    csrf: str = ""
    why: str = ""  # why nobody is signed in (a stale cookie, an expired token)
    anonymous_admin: bool = False  # a --plaintext manager: everybody is admin

    def may(self, perm: Permission | str) -> bool:
        if self.ident is None:
            return False
        return self.anonymous_admin or allowed(self.ident, Permission(perm))

    @property
    def allowed(self) -> bool:
        return self.may(self.need)

    @property
    def name(self) -> str:
        if self.ident is None:
            return ""
        if self.anonymous_admin:
            return "admin (plaintext manager: no authentication)"
        tenant = f" of tenant {self.ident.tenant}" if self.ident.tenant else ""
        return f"{self.ident.role.value}/{self.ident.name}{tenant}"


def _auth(request: Request) -> Auth:
    return getattr(request.app.state, "auth", None) or Auth.disabled()


async def identify(request: Request) -> tuple[Identity | None, str, str]:
    """(identity, session key, why not): from the session cookie, else as the API does."""
    auth = _auth(request)
    token = request.cookies.get(COOKIE)
    if token and auth.repo is not None:
        try:
            return await auth.tokens.identify(token, auth.repo.cluster_id), token, ""
        except Unauthenticated as e:
            return None, "", f"your session ended: {e}"
    try:
        ident = await caller(request)
    except Unauthenticated:
        return None, "", ""
    return ident, f"identity:{ident}", ""


def viewer(perm: Permission) -> Callable[[Request], Awaitable[Viewer]]:
    """A route's dependency: the ``Viewer`` (never raises for a missing session or
    permission: the route answers with the login page or 403 itself)."""

    async def dependency(request: Request) -> Viewer:
        ident, session, why = await identify(request)
        key = csrf_key(request)
        anon = (
            ident is not None
            and _auth(request).plaintext
            and ident.name == ANONYMOUS_ADMIN
            and ident.role is Role.ADMIN
        )
        return Viewer(
            ident,
            perm,
            session=session,
            csrf=csrf.token_for(key, session) if session else "",
            why=why,
            anonymous_admin=anon,
        )

    dependency.permission = str(perm)  # type: ignore[attr-defined]  # for add_security
    return dependency


def csrf_ok(request: Request, v: Viewer, presented: str | None) -> bool:
    """A POST's form token matches the session's, and it came from this origin."""
    return (
        bool(v.session)
        and csrf.valid(csrf_key(request), v.session, presented or request.headers.get(csrf.HEADER))
        and csrf.same_origin(
            request.headers.get("origin"),
            request.headers.get("referer"),
            request.headers.get("host"),
        )
    )


def csrf_key(request: Request) -> bytes:
    """The process's CSRF key (``mount`` makes it: app.state.ui_csrf_key)."""
    key: bytes = request.app.state.ui_csrf_key
    return key
