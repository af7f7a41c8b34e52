"""The README stays true: its configuration table is the one the code generates, and the commands
it opens with are the ones the Makefile and CI provide."""

from __future__ import annotations

import re
from pathlib import Path

from kichat.config import render_settings_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_matches_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_settings_markdown().strip() in readme, (
        "README.md's configuration table is stale: paste `kichat check-config --list --markdown`"
    )


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    opening = readme.split("## Contents")[0]
    assert "make demo" in opening and "make test" in opening
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_local_links_resolve_in_a_clone() -> None:
    """Every relative link of the READMEs names a file of this repository, and no text points
    outside it (a clone has nothing beside it)."""
    for readme in (ROOT / "README.md", ROOT / "examples" / "README.md"):
        text = readme.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (readme.parent / target).exists(), f"{readme.name}: {target} does not exist"
        assert "../shared" not in text
        assert "design/architecture.md" not in text


def test_license_matches_pyproject() -> None:
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 kichat contributors" in text
