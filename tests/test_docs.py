"""The README and docs/ only link to files inside the repository, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # URLs, anchors
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_every_protocol_page_is_in_the_index():
    index = (ROOT / "docs" / "protocols" / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs" / "protocols").glob("*.md")} - {"README.md"}
    assert pages == set(LINK.findall(index)) & pages
    for name in ("scr", "permuted_mnist", "continual_imagenet", "incremental_cifar", "ppo"):
        assert f"{name}.md" in pages
