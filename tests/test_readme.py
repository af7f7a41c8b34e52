"""The README stays true: its configuration table is the one the code generates, and the commands
it opens with are the ones the Makefile and CI provide."""

from __future__ import annotations

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
