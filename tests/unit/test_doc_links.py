"""The docs stand alone: every relative link in README.md and docs/**/*.md resolves to a
file of the repository, every ``#anchor`` to a heading of its page (GitHub's slugs), no
link or path leaves the repository, and no page speaks of "issue N" of a tracker readers do
not have (say what is meant instead). Runs in ``make test``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
HTML_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.I)
ISSUE = re.compile(r"\bissues?\s+#?\d+", re.I)
OUTSIDE = re.compile(r"\.\./shared/|(?<![\w.])/work/")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (their brackets are not links)."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    found |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", page.read_text()))
    return found


def links(page: Path) -> list[str]:
    text = prose(page.read_text())
    return LINK.findall(text) + REF_DEF.findall(text) + HTML_HREF.findall(text)


def problems(page: Path) -> list[str]:
    out = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}: ({target})"
        if ROOT not in dest.parents and dest != ROOT:
            out.append(f"{where} leaves the repository")
        elif not dest.exists():
            out.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    assert problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_or_at_a_tracker(page: Path) -> None:
    text = page.read_text()
    bad = [m.group(0) for m in OUTSIDE.finditer(text)]
    bad += [m.group(0) for m in ISSUE.finditer(text)]
    assert bad == [], f"{page.relative_to(ROOT)}: say what is meant, in the repository"


def test_the_checker_finds_what_it_must(tmp_path: Path) -> None:
    """The checker itself: a broken file, a broken anchor and a way out are each caught;
    code spans, URLs and good anchors are not."""
    assert slug("`Node` (GET /api/v1/nodes)") == "node-get-apiv1nodes"
    assert slug("Mounting a volume by hand") == "mounting-a-volume-by-hand"
    page = ROOT / "docs" / "_probe_.md"
    page.write_text(
        "# Top\n## Top\n[a](operations.md#mounting-a-volume-by-hand) [b](#top-1) "
        "[c](https://example.com/x#y) `[d](nowhere.md)`\n```\n[e](nowhere.md)\n```\n"
        "[f](nowhere.md) [g](operations.md#no-such-heading) [h](../../outside.md)\n"
    )
    try:
        found = problems(page)
    finally:
        page.unlink()
    assert len(found) == 3, found
    assert "(nowhere.md): no such file" in found[0]
    assert "no heading #no-such-heading" in found[1]
    assert "leaves the repository" in found[2]
