from __future__ import annotations

import re
from pathlib import Path

from gateway.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_config_table_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, re.MULTILINE))
    assert set(rows) == {s.env for s in SETTINGS}
    for s in SETTINGS:
        expected = f"`{s.default}`" if s.default is not None else "—"
        assert rows[s.env].strip() == expected, s.env


def test_ci_runs_the_readme_test_command() -> None:
    test_command = re.search(r"## Test it\n\n```sh\n(.+)\n```", README)
    assert test_command is not None
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command[1] in ci
