"""Every relative link in the repository's Markdown resolves to a file inside the repository (a clone has no
other), read from the linking file's own folder as Markdown viewers do, and never climbs out of that folder with
``..``: such a link reads as leaving the repository wherever it is resolved from elsewhere (a checker at the
root, a copy of the file), so a document names a file in a parent folder in words instead."""

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
def test_relative_links_stay_below_their_folder_and_resolve(doc):
    for target in relative_links(doc):
        assert ".." not in Path(target).parts, f"{doc.name} links up and out of its folder: {target}"
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_check_sees_links_and_images():
    log = ROOT / "docs/log/reliability-history.md"
    assert {"soak.png", "soak-100-users.png", "reliability-history.md"} & set(relative_links(log))
    assert "docs/log/soak-100-users.png" in relative_links(ROOT / "RELIABILITY.md")
