"""The Meltano Hub plugin definition (plugin/loaders/target-pinterest-audiences.yml).

- It declares exactly the target's own settings (`--about --format json`), with kind, default,
  options and `sensitive` for secrets, and agrees with the project's meltano.yml: a setting
  added to the target and forgotten in either file fails here, naming the setting and the file.
  These checks need no Meltano and run in every test session.
- `meltano add --from-ref` puts it into a fresh Meltano project (`meltano init`), `meltano
  install` installs this checkout from it, and `meltano config list` shows every setting with
  secrets redacted (marked `meltano`, like the other Meltano tests).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import meltano_helpers as mh
import pytest
import yaml
from conftest import cli_command

from target_pinterest_audiences.emulator import Emulator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

#: Top-level keys of a Hub loader definition (the Hub's plugin_definitions/loaders schema).
_HUB_KEYS = {
    "name",
    "namespace",
    "variant",
    "label",
    "description",
    "logo_url",
    "repo",
    "docs",
    "pip_url",
    "executable",
    "capabilities",
    "settings",
    "settings_group_validation",
    "commands",
    "dialect",
    "target_schema",
    "hidden",
    "requires",
    "maintenance_status",
    "domain_url",
    "keywords",
    "definition",
    "next_steps",
    "settings_preamble",
    "usage",
    "prereq",
}
_HUB_REQUIRED = {"name", "namespace", "variant", "label"}
#: Keys a Hub setting may have (the Hub's base_setting schema).
_SETTING_KEYS = {
    "name",
    "aliases",
    "label",
    "value",
    "placeholder",
    "kind",
    "description",
    "tooltip",
    "documentation",
    "env",
    "value_processor",
    "value_post_processor",
    "oauth",
    "options",
    "docs",
    "hidden",
    "sensitive",
}
#: What the project's meltano.yml must copy from the definition verbatim.
_SHARED_KEYS = (
    "namespace",
    "executable",
    "label",
    "description",
    "capabilities",
    "commands",
    "settings_group_validation",
)


def definition() -> dict[str, Any]:
    return yaml.safe_load(mh.PLUGIN_DEFINITION.read_text(encoding="utf-8"))


def pyproject() -> dict[str, Any]:
    return tomllib.loads((mh.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.fixture(scope="module")
def about() -> dict[str, Any]:
    """The installed target's own description of itself."""
    proc = subprocess.run(
        [*cli_command(), "--about", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


# ---- the file, against the target and meltano.yml --------------------------------------------


def test_definition_declares_exactly_the_targets_settings(about: dict[str, Any]) -> None:
    plugin = definition()
    where = str(mh.PLUGIN_DEFINITION.relative_to(mh.REPO))
    problems = mh.setting_problems(plugin["settings"], about["settings"]["properties"], where)
    assert not problems, "\n".join(problems)
    assert set(plugin["capabilities"]) == set(about["capabilities"])

    # The Hub's format: known keys only (Meltano silently drops unknown ones).
    assert plugin.keys() >= _HUB_REQUIRED
    assert plugin.keys() <= _HUB_KEYS, plugin.keys() - _HUB_KEYS
    for setting in plugin["settings"]:
        assert setting.keys() <= _SETTING_KEYS, (setting["name"], setting.keys() - _SETTING_KEYS)

    # It installs this package and runs its scripts.
    project = pyproject()
    assert plugin["name"] == project["name"] == mh.LOADER
    assert plugin["pip_url"] == project["name"]
    assert plugin["namespace"] == "target_pinterest_audiences"
    scripts = project["scripts"]
    assert plugin["executable"] in scripts
    for name, command in plugin["commands"].items():
        assert command["executable"] in scripts, name

    # Every credential group names real settings and the one setting the target requires.
    names = {s["name"] for s in plugin["settings"]}
    required = set(about["settings"].get("required", []))
    assert plugin["settings_group_validation"]
    for group in plugin["settings_group_validation"]:
        assert set(group) <= names, set(group) - names
        assert required <= set(group), group
    sensitive = {s["name"] for s in plugin["settings"] if s.get("sensitive")}
    assert {"access_token", "refresh_token", "client_id", "client_secret"} <= sensitive


def test_definition_and_meltano_yml_agree() -> None:
    """The project's meltano.yml carries the same loader: the same blocks in both files."""
    plugin, loader = definition(), mh.project_loader()
    for key in _SHARED_KEYS:
        assert loader.get(key) == plugin.get(key), f"meltano.yml and the definition differ: {key}"
    ours = {s["name"]: s for s in plugin["settings"]}
    theirs = {s["name"]: s for s in loader["settings"]}
    assert sorted(theirs.keys() - ours.keys()) == [], "in meltano.yml only: add to the definition"
    assert sorted(ours.keys() - theirs.keys()) == [], "in the definition only: add to meltano.yml"
    differing = [name for name in ours if ours[name] != theirs[name]]
    assert differing == [], "these settings' blocks differ between meltano.yml and the definition"


def test_the_check_catches_a_forgotten_setting(about: dict[str, Any]) -> None:
    """The check itself can fail: a new target setting, a secret not marked sensitive."""
    properties = copy.deepcopy(about["settings"]["properties"])
    properties["a_setting_added_later"] = {"type": ["string", "null"], "enum": ["a", "b"]}
    settings = copy.deepcopy(definition()["settings"])
    for setting in settings:
        if setting["name"] == "access_token":
            del setting["sensitive"]
    problems = mh.setting_problems(settings, properties, "the-file.yml")
    assert len(problems) == 2, problems
    assert any("the-file.yml" in p and "'a_setting_added_later'" in p for p in problems), problems
    assert any("'access_token' must have sensitive: True" in p for p in problems), problems


# ---- a fresh Meltano project -----------------------------------------------------------------


@pytest.fixture(scope="module")
def meltano_exe() -> Path:
    return mh.meltano_executable()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(port=0, ad_accounts=(mh.AD_ACCOUNT,), access_token=mh.ACCESS_TOKEN).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.mark.meltano
def test_add_to_a_fresh_project(meltano_exe: Path, emu: Emulator, tmp_path: Path) -> None:
    # The definition as a user gets it, installing this checkout instead of the PyPI package.
    text = mh.PLUGIN_DEFINITION.read_text(encoding="utf-8")
    local, n = re.subn(r"(?m)^pip_url: .*$", f"pip_url: -e {mh.REPO}", text)
    assert n == 1
    ref = tmp_path / "target-pinterest-audiences.yml"
    ref.write_text(local, encoding="utf-8")

    env = mh.clean_env(XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))
    init = subprocess.run(
        [str(meltano_exe), "init", "my-project", "--no-usage-stats"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stderr[-3000:]
    meltano = mh.Meltano(meltano_exe, tmp_path / "my-project", env)

    # The README's command (with --no-install: `meltano install` is tested on its own).
    meltano("add", "--plugin-type", "loader", mh.LOADER, "--from-ref", str(ref), "--no-install")
    project = yaml.safe_load((meltano.project / "meltano.yml").read_text(encoding="utf-8"))
    assert set(project["plugins"]) == {"loaders"}, project["plugins"].keys()
    added = mh.project_loader(meltano.project / "meltano.yml")
    plugin = definition()
    assert added["settings"] == plugin["settings"]
    for key in ("namespace", "executable", "capabilities", "commands", "variant"):
        assert added[key] == plugin[key], key
    assert added["settings_group_validation"] == plugin["settings_group_validation"]
    assert mh.schema_errors(meltano_exe, meltano.project / "meltano.yml") == []

    meltano("install")
    installed = json.loads(meltano("invoke", mh.LOADER, "--about", "--format=json").stdout)
    assert installed["version"] == pyproject()["version"]
    problems = mh.setting_problems(
        added["settings"], installed["settings"]["properties"], "the added plugin"
    )
    assert not problems, "\n".join(problems)

    # Every setting listed under its variable; secrets given in the environment are redacted.
    secrets = {
        "TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN": mh.ACCESS_TOKEN,
        "TARGET_PINTEREST_AUDIENCES_REFRESH_TOKEN": "pinr_" + uuid.uuid4().hex,
        "TARGET_PINTEREST_AUDIENCES_CLIENT_ID": "1" + uuid.uuid4().hex[:12],
        "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": "cs_" + uuid.uuid4().hex,
    }
    run_env = dict(
        env,
        TARGET_PINTEREST_AUDIENCES_AD_ACCOUNT_ID=mh.AD_ACCOUNT,
        TARGET_PINTEREST_AUDIENCES_API_URL=emu.api_url,
        **secrets,
    )
    listed = meltano("config", "list", mh.LOADER, "--all", env=run_env)
    out = " ".join(listed.stdout.split())
    for setting in plugin["settings"]:
        name = setting["name"]
        var = f"TARGET_PINTEREST_AUDIENCES_{name.upper()}"
        assert re.search(rf"(^| ){re.escape(name)}( \([^)]*\))? \[env: {var}\]", out), name
    assert "Setting groups" in out
    for value in secrets.values():
        assert value not in listed.stdout + listed.stderr
    assert out.count("(redacted)") == len(secrets)

    # The auth helper's commands came along: `:check` reaches the emulator's ad account (a
    # hand-given token's scopes stay unverified, hence rc 0 or 1).
    access_only = {k: v for k, v in run_env.items() if k not in secrets}
    access_only["TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN"] = mh.ACCESS_TOKEN
    check = meltano("invoke", f"{mh.LOADER}:check", check=False, env=access_only)
    assert check.returncode in (0, 1), check.stderr[-3000:]
    assert mh.AD_ACCOUNT in check.stdout + check.stderr
