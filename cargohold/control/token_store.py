"""The REST API's bearer tokens as records of the state store (``/tokens/<id>``).

``auth.py`` checks a presented token here (its digest, its expiry); the ``/api/v1/tokens``
routes and ``cargohold manager --init`` (the first admin token) make and delete them. The
token itself (``chk_<id>_<secret>``, security/tokens.py) is returned once and never
stored: a record holds its SHA-256.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from cargohold.control.access import ApiToken
from cargohold.control.model import keys
from cargohold.control.state.base import Compare, Delete, Put, StateStore
from cargohold.errors import InvalidArgument, NotFound, Unauthenticated
from cargohold.security import tokens
from cargohold.security.identity import Identity, Role, check_name

TOKEN_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.READER, Role.CSI})
"""The roles a token may carry: people, scripts and CSI drivers. The components (manager,
agents, replica servers, engines) authenticate with certificates only."""


class TokenStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def create(
        self,
        role: str,
        name: str,
        tenant: str | None = None,
        ttl: float | None = None,
        now: float | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token: its record (stored) and the token itself (to show once)."""
        try:
            r = Role(role)
        except ValueError:
            raise InvalidArgument(f"unknown role {role!r}") from None
        if r not in TOKEN_ROLES:
            ok = ", ".join(sorted(TOKEN_ROLES))
            raise InvalidArgument(f"a token cannot carry role {r}; one of: {ok}")
        check_name("token name", name)
        if tenant is not None:
            check_name("tenant", tenant)
        if ttl is not None and ttl <= 0:
            raise InvalidArgument(f"ttl must be positive, not {ttl}")
        t = time.time() if now is None else now
        new = tokens.new_token()
        rec = ApiToken(
            id=new.id,
            digest=new.digest,
            role=r.value,
            name=name,
            tenant=tenant,
            created=t,
            expires=None if ttl is None else t + ttl,
        )
        key = keys.token(new.id)
        if not await self.store.txn([Compare(key, 0)], [Put(key, rec.model_dump_json().encode())]):
            raise InvalidArgument("token id collision; try again")  # 48 random bits
        return rec, new.token

    async def list(self) -> list[ApiToken]:
        out = []
        for e in await self.store.range(keys.TOKENS):
            try:
                out.append(ApiToken.model_validate_json(e.value))
            except ValidationError:
                continue  # a broken record authenticates nobody
        return sorted(out, key=lambda t: t.created)

    async def delete(self, tid: str) -> ApiToken:
        key = keys.token(tid)
        e = await self.store.get(key)
        if e is None:
            raise NotFound(f"token {tid} not found")
        await self.store.txn([], [Delete(key)])
        return ApiToken.model_validate_json(e.value)

    async def identify(self, token: str, cluster: str, now: float | None = None) -> Identity:
        """The identity a presented token stands for; Unauthenticated (never echoing the
        token) when it is malformed, unknown, wrong or expired."""
        tid = tokens.token_id(token)
        e = await self.store.get(keys.token(tid))
        if e is None:
            raise Unauthenticated(f"unknown bearer token {tid}")
        try:
            rec = ApiToken.model_validate_json(e.value)
        except ValidationError:
            raise Unauthenticated(f"bearer token {tid} has a broken record") from None
        if not tokens.matches(token, rec.digest):
            raise Unauthenticated(f"wrong secret for bearer token {tid}")
        if rec.expires is not None and (time.time() if now is None else now) >= rec.expires:
            raise Unauthenticated(f"bearer token {tid} expired")
        return Identity(cluster, Role(rec.role), rec.name, rec.tenant)
