"""The README's settings table is the one the code declares."""

from __future__ import annotations

import re
from pathlib import Path

from smsuper import settings
from smsuper.serve import timeouts

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_matches_the_declarations():
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert table, "README.md lost its settings markers"
    assert table.group(1).strip() == settings.markdown_table().strip(), (
        "README settings table is stale: regenerate with `python3 -m smsuper.settings --markdown`")


def test_readme_timeouts_table_is_the_one_the_code_uses():
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- timeouts:start -->\n(.*?)\n<!-- timeouts:end -->", text, re.S)
    assert table, "README.md lost its timeouts markers"
    assert table.group(1).strip() == timeouts.markdown_table().strip(), (
        "README timeouts table is stale: copy it from smsuper/serve/timeouts.py (markdown_table())")


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "bash scripts/demo.sh" in first_block and "bash scripts/test.sh" in first_block
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("bash scripts/test.sh")
