"""docs/paper_fidelity.md names the test that pins each row: every name must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_fidelity_rows_name_existing_tests():
    text = (ROOT / "docs" / "paper_fidelity.md").read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    # a bare `name` after a reference in the same cell means the same file
    for cell in text.split("|"):
        files = re.findall(r"`(tests/[\w/]+\.py)::\w+`", cell)
        if files:
            refs += [(files[0], n) for n in re.findall(r"`(test_\w+)`", cell)]
    assert len(refs) >= 15
    missing = [
        f"{path}::{name}"
        for path, name in refs
        if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/paper_fidelity.md names tests that do not exist: {missing}"
