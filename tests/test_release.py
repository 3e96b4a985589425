"""Release hygiene: one version, shown by the CLI, with its entry in CHANGELOG.md.

The version lives only in pyproject.toml; singer-sdk reads it from the installed package's
metadata for `--version` and `--about`. An editable install keeps the metadata of the last
`pip install -e .`, so after a version bump these tests fail until the package is reinstalled.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

from conftest import cli_command
from meltano_helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib


def project_version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project.get("dynamic", [])
    return str(project["version"])


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [*cli_command(), *args], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout + proc.stderr


def test_version_and_about_show_the_package_version() -> None:
    version = project_version()
    hint = "reinstall the package (pip install -e .) after changing the version"
    assert metadata.version("target-pinterest-audiences") == version, hint
    shown = re.search(r"target-pinterest-audiences v(\S+),", _cli("--version"))
    assert shown is not None
    assert shown.group(1) == version, hint
    about = json.loads(_cli("--about", "--format", "json"))
    assert about["version"] == version, hint


def test_changelog_has_unreleased_and_the_current_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"(?m)^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text)
    assert headings, "CHANGELOG.md needs '## [Unreleased]' and '## [X.Y.Z] - YYYY-MM-DD' headings"
    assert headings[0] == ("Unreleased", ""), "the first section is ## [Unreleased]"
    released = [(v, d) for v, d in headings[1:]]
    assert all(d for _, d in released), "every released version has a date"
    assert released[0][0] == project_version(), (
        "the newest released section of CHANGELOG.md is the version in pyproject.toml"
    )
