"""scripts/check-links: the docs link check that the test command runs (one row per rule)."""
from __future__ import annotations

import subprocess
import sys

from tests import support

SCRIPT = support.ROOT / "scripts" / "check-links"


def run(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60)


def test_the_repository_has_no_broken_links():
    res = run(support.ROOT)
    assert res.returncode == 0, res.stderr


def test_broken_links_and_anchors_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "lane-table.md").write_text("# The lane table (format version 1)\n## Shape\n## Shape\n")
    (tmp_path / "README.md").write_text("\n".join([
        "# Top",
        "[ok](docs/lane-table.md) [ok anchor](docs/lane-table.md#shape) [dup](docs/lane-table.md#shape-1)",
        "[ok heading](docs/lane-table.md#the-lane-table-format-version-1) [self](#top)",
        "[web](https://example.invalid/x) `[code](nowhere.md)`",
        "```", "[fenced](nowhere.md)", "```",
        "[moved](lane-table.md)",                   # the README's old broken link: relative to the root
        "[bad anchor](docs/lane-table.md#nope)",
        "[bad self](#missing)",
    ]))
    res = run(tmp_path)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if "README.md:" in ln]
    assert lines == [
        "check-links: README.md:8: lane-table.md: no such file",
        "check-links: README.md:9: docs/lane-table.md#nope: no heading #nope in docs/lane-table.md",
        "check-links: README.md:10: #missing: no heading #missing in README.md",
    ], res.stderr
    assert "8 relative links in 2 Markdown files, 3 broken" in res.stderr
