"""Server-side filter, sort and pagination of the volumes page (pure).

The console never sends a browser more than one page of volumes: the query (from the
page's URL) is applied to the volume records the caller may see, and only the page's
records are turned into views. Called by app.py; tested in tests/unit/ui/test_listing.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cargohold.control.model import Robustness, Volume, VolumeState

T = TypeVar("T")

SORT_KEYS = ("name", "size", "state", "robustness", "created", "node")
PER_PAGE = (25, 50, 100)
MAX_FILTER = 63  # a volume name's length: longer filters match nothing anyway

# worst first: sorting by robustness puts what needs attention on top
ROBUSTNESS_ORDER = {
    Robustness.FAULTED: 0,
    Robustness.DEGRADED: 1,
    Robustness.UNKNOWN: 2,
    Robustness.HEALTHY: 3,
}


@dataclass(frozen=True)
class VolumeQuery:
    """What the volumes page shows: a name (or label, node, tenant) substring, a state and
    a robustness to keep, the sort key and order, the page and its size."""

    text: str = ""
    state: str = ""
    robustness: str = ""
    sort: str = "name"
    descending: bool = False
    page: int = 1
    per_page: int = PER_PAGE[0]

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> VolumeQuery:
        """From a page's query parameters; anything unknown or malformed falls back to the
        default (a bookmark with a stale parameter still opens)."""
        state = params.get("state", "")
        rob = params.get("robustness", "")
        sort = params.get("sort", "name")
        try:
            page = max(1, min(int(params.get("page", "1")), 1_000_000))
        except ValueError:
            page = 1
        try:
            per_page = int(params.get("per_page", str(PER_PAGE[0])))
        except ValueError:
            per_page = PER_PAGE[0]
        return cls(
            text=params.get("q", "").strip()[:MAX_FILTER],
            state=state if state in VolumeState.__members__.values() else "",
            robustness=rob if rob in Robustness.__members__.values() else "",
            sort=sort if sort in SORT_KEYS else "name",
            descending=params.get("order", "asc") == "desc",
            page=page,
            per_page=per_page if per_page in PER_PAGE else PER_PAGE[0],
        )

    def params(self, **change: object) -> dict[str, str]:
        """The query parameters of this query with ``change`` applied (links: next page,
        another sort); defaults left out so URLs stay short."""
        d = {
            "q": self.text,
            "state": self.state,
            "robustness": self.robustness,
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "page": str(self.page),
            "per_page": str(self.per_page),
        }
        for k, v in change.items():
            d[k] = str(v)
        default = {"sort": "name", "order": "asc", "page": "1", "per_page": str(PER_PAGE[0])}
        return {k: v for k, v in d.items() if v and default.get(k) != v}


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int  # matching the filter, before pagination
    page: int  # 1-based, clamped to the last page
    pages: int
    start: int = 0  # the 0-based position of its first item among all ``total``

    @property
    def first(self) -> int:
        """The 1-based position of the page's first item (0 when empty)."""
        return self.start + 1 if self.items else 0

    @property
    def last(self) -> int:
        return self.start + len(self.items)


def matches(vol: Volume, q: VolumeQuery) -> bool:
    if q.state and vol.state.value != q.state:
        return False
    if q.robustness and vol.robustness.value != q.robustness:
        return False
    if q.text:
        t = q.text.lower()
        hay = [vol.name, vol.attach_node or "", vol.tenant or ""]
        hay += [f"{k}={v}" for k, v in vol.labels.items()]
        return any(t in h.lower() for h in hay)
    return True


def sort_key(q: VolumeQuery) -> Callable[[Volume], Any]:
    keys: dict[str, Callable[[Volume], Any]] = {
        "name": lambda v: v.name,
        "size": lambda v: (v.size_bytes, v.name),
        "state": lambda v: (v.state.value, v.name),
        "robustness": lambda v: (ROBUSTNESS_ORDER.get(v.robustness, 9), v.name),
        "created": lambda v: (v.created_at, v.name),
        "node": lambda v: (v.attach_node or "~", v.name),
    }
    return keys[q.sort]


def paginate(items: Sequence[T], page: int, per_page: int) -> Page[T]:
    """``page`` (1-based) of ``items``, clamped to the last page (an empty list: page 1 of 1)."""
    pages = max(1, -(-len(items) // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    return Page(list(items[start : start + per_page]), len(items), page, pages, start)


def select(vols: Sequence[Volume], q: VolumeQuery) -> Page[Volume]:
    """The page of ``vols`` (already only those the caller may see) that ``q`` asks for."""
    kept = [v for v in vols if matches(v, q)]
    kept.sort(key=sort_key(q), reverse=q.descending)
    return paginate(kept, q.page, q.per_page)
