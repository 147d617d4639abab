"""Relative links in README.md and docs/*.md lead to files that exist and to headings that exist.

The docs cite measurements by linking result files and sections; a renamed heading or a moved result folder
would otherwise leave a dead link that only a reader finds.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(page: Path):
    """(line number, line) of a page outside its fenced code blocks."""
    in_code = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            yield number, line


@functools.cache
def headings(page: Path) -> frozenset[str]:
    """The anchors of a page's headings, with GitHub's -1, -2 suffixes for repeated ones (read once a page)."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in prose_lines(page):
        if not line.startswith("#"):
            continue
        anchor = github_anchor(line.lstrip("#"))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return frozenset(anchors)


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of the relative links outside code blocks."""
    return [(number, target) for number, line in prose_lines(page) for target in LINK.findall(line)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked offline


def test_github_anchor_matches_githubs_rule():
    assert github_anchor(" q4_k_m keeps ffn_down and q/k/v at Q8_0 (2026-12-07)") == \
        "q4_k_m-keeps-ffn_down-and-qkv-at-q8_0-2026-12-07"
    assert github_anchor(" OpenVINO int8 (`--format openvino`, 2026-12-06)") == \
        "openvino-int8---format-openvino-2026-12-06"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for number, target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in headings(resolved):
            broken.append(f"{page.name}:{number}: {target} (no heading #{anchor} in {resolved.name})")
    assert not broken, "\n".join(broken)
