"""Every relative link in the repository's Markdown resolves to a file inside the repository (a clone has no
other), read from the linking file's own folder as Markdown viewers do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def relative_links(doc: Path) -> list[str]:
    return [t for t in LINK.findall(doc.read_text()) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_inside_the_repository_and_resolve(doc):
    for target in relative_links(doc):
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_check_sees_links_that_climb_folders():
    log = ROOT / "docs/log/reliability-history.md"
    assert "../../RELIABILITY.md" in relative_links(log)  # resolves to the root's RELIABILITY.md
    assert not (ROOT / "../RELIABILITY.md").resolve().is_relative_to(ROOT)
