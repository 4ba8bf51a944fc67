"""``Claims``: the encrypting device's claimed block ranges, indexed by group."""

from __future__ import annotations

import asyncio

from cargohold.encryption.layout import GROUP
from cargohold.frontend.encrypted_claims import Claims


async def test_a_claim_owns_exactly_its_blocks_across_groups_until_released() -> None:
    loop = asyncio.get_running_loop()
    c = Claims()
    assert not c and c.owner(0, 10 * GROUP) is None
    big, small = loop.create_future(), loop.create_future()
    c.take(GROUP - 3, 3 * GROUP + 5, big)  # four groups, partly the first and last
    c.take(3 * GROUP + 5, 3 * GROUP + 6, small)  # its neighbour in the last group
    assert c
    assert c.owner(0, GROUP - 3) is None and (GROUP - 4) not in c
    assert c.owner(0, GROUP - 2) is big and (GROUP - 3) in c
    assert c.owner(2 * GROUP, 2 * GROUP + 1) is big  # a middle group
    assert c.owner(3 * GROUP + 4, 3 * GROUP + 5) is big
    assert c.owner(3 * GROUP + 5, 3 * GROUP + 6) is small
    assert c.owner(3 * GROUP + 6, 5 * GROUP) is None
    assert [c.group_claimed(g) for g in range(5)] == [True, True, True, True, False]
    assert sorted(map(id, c.futures())) == sorted([id(big), id(small)])
    assert c.release(GROUP - 3, 3 * GROUP + 5) is big
    assert c.owner(0, 3 * GROUP + 5) is None and (3 * GROUP + 5) in c
    assert [c.group_claimed(g) for g in range(4)] == [False, False, False, True]
    assert c.release(GROUP - 3, 3 * GROUP + 5) is None  # released once
    assert c.release(3 * GROUP + 5, 3 * GROUP + 6) is small
    assert not c and c.futures() == []


async def test_releasing_one_of_several_claims_in_a_group_keeps_the_others() -> None:
    loop = asyncio.get_running_loop()
    c = Claims()
    futs = [loop.create_future() for _ in range(4)]
    for k, f in enumerate(futs):
        c.take(2 * k, 2 * k + 1, f)
    assert c.release(2, 3) is futs[1]
    assert [c.owner(b, b + 1) for b in range(8)] == [
        futs[0], None, None, None, futs[2], None, futs[3], None,
    ]  # fmt: skip
    assert c.owner(0, 8) is futs[0] and c.owner(1, 4) is None
