"""Nothing in the repository cites a protocols file outside it (issue #10): every citation points to
docs/protocols/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"PROTOCOLS|\.\./shared/|(?<![\w/])§\s*\d")


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    return [
        f for f in out.stdout.splitlines() if (ROOT / f).is_file() and not f.startswith("docs/protocols/")
    ]


def test_citations_point_inside_the_repository():
    offenders = set()
    for rel in _tracked():
        if rel == "tests/test_no_outside_refs.py":
            continue
        try:
            text = (ROOT / rel).read_text()
        except UnicodeDecodeError:
            continue
        if OUTSIDE.search(text):
            offenders.add(rel)
    assert offenders == set(), "cite docs/protocols/<page>.md instead"
