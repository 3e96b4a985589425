"""The user's manual stays true: README.md and docs/*.md.

- every relative link and `#anchor` in README.md and docs/*.md resolves, with GitHub's heading
  anchors (lowercase; punctuation other than `-` and `_` dropped; spaces to `-`; a repeated
  heading gets `-1`, `-2`, ...);
- docs/settings.md is what scripts/gen_settings_doc.py makes of `--about --format json` today,
  every setting has a topic page, and that page names it;
- every YAML example configures only settings the target has; the README's minimal
  meltano.yml is a valid Meltano project whose secrets from `.env` reach the target;
- the README stays a first screen (at most 15,000 bytes, naming the two commands and pytest)
  and links to every docs page;
- a file the docs, the changelog, meltano.yml or the Hub definition name still exists.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import meltano_helpers as mh
import pytest
import yaml

REPO = mh.REPO
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_BYTES = 15_000
_MINIMAL_MARKER = "<!-- tests/test_docs.py checks this block"


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# ---- Markdown, as GitHub reads it --------------------------------------------------------------

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the text outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)  # code spans keep their text
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML goes
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w: Unicode letters, digits and _
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings (repeats numbered) and <a id/name> tags."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for _, line in prose_lines(text):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition."""
    for number, line in prose_lines(text):
        ref = _REF_DEF.match(line)
        if ref:
            yield number, ref.group(1)
            continue
        bare = _CODE_SPAN.sub("", line)
        for match in _INLINE_LINK.finditer(bare):
            yield number, match.group(1)


def broken_links(files: list[Path], root: Path) -> list[str]:
    """Each relative link or anchor in files that does not resolve, as 'file:line: why'."""
    problems = []
    for page in files:
        text = page.read_text(encoding="utf-8")
        for number, target in links(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto:, ...: not ours to check
            where = f"{page.relative_to(root)}:{number}: {target}"
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if root.resolve() not in (dest, *dest.parents):
                problems.append(f"{where}: leaves the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: no such file {dest.relative_to(root.resolve())}")
                continue
            if anchor:
                if dest.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not Markdown")
                elif anchor not in anchors(dest.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return problems


def test_slugs_are_githubs() -> None:
    assert slug("Sync modes: events and mirror") == "sync-modes-events-and-mirror"
    assert (
        slug("The snapshot: what the target confirmed") == "the-snapshot-what-the-target-confirmed"
    )
    assert slug("A list's kind") == "a-lists-kind"
    assert slug("`scripts/test.sh`") == "scriptstestsh"
    assert slug("Status, size and match rate") == "status-size-and-match-rate"
    assert slug("snake_case and kebab-case") == "snake_case-and-kebab-case"
    assert slug("[Linked](x.md) **bold**") == "linked-bold"
    assert slug("Übersicht (é)") == "übersicht-é"
    assert slug("A -- B") == "a----b"
    text = '# Notes\n## Notes\n```\n# not a heading\n```\n### Notes\n<a id="custom"></a>\n'
    assert anchors(text) == {"notes", "notes-1", "notes-2", "custom"}


def test_the_link_check_finds_what_is_broken(tmp_path: Path) -> None:
    """The checker itself: a good link, a good repeated anchor, and four broken ones."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A\n\n## Setup\n\n## Setup\n\n[ok](../README.md#top) [ok](#setup-1)\n"
        "`[in code](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "# Top\n\n[ok](docs/a.md#setup) [web](https://example.com/#x)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#setup-2)\n"
        "[self](#nowhere)\n[ref]: docs/c.md\n[out](../../etc/passwd)\n",
        encoding="utf-8",
    )
    problems = broken_links(pages(tmp_path), tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "README.md:4",
        "README.md:4",
        "README.md:5",
        "README.md:6",
        "README.md:7",
    ], problems
    assert "no such file docs/b.md" in problems[0]
    assert "#setup-2" in problems[1]
    assert "#nowhere" in problems[2]
    assert "docs/c.md" in problems[3]
    assert "leaves the repository" in problems[4]


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = broken_links(pages(), REPO)
    assert not problems, "broken links in the documentation:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in links(README.read_text(encoding="utf-8"))
    }
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link to: {orphans}"


def test_the_readme_is_a_first_screen() -> None:
    data = README.read_bytes()
    assert len(data) <= README_MAX_BYTES, (
        f"README.md is {len(data)} bytes, more than {README_MAX_BYTES}: move detail to docs/"
    )
    text = data.decode("utf-8")
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh", "pytest", "meltano add"):
        assert command in text, command


_REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|benchmarks|scripts|tests|plugin|target_pinterest_audiences)/[\w./-]*"
    r"\.(?:md|py|sh|ya?ml|json|csv|toml))\b"
)
_NAMING_FILES = (
    "README.md",
    "CHANGELOG.md",
    "benchmarks/README.md",
    "meltano.yml",
    "pyproject.toml",
)


def test_paths_named_in_the_docs_exist() -> None:
    """A file such as `docs/settings.md` or `target_pinterest_audiences/sync/mirror.py` named in
    the documentation, the changelog, meltano.yml or the Hub definition still exists."""
    files = [REPO / name for name in _NAMING_FILES] + sorted(DOCS.glob("*.md"))
    files += sorted((REPO / "plugin").rglob("*.yml"))
    missing = []
    for page in files:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for path in _REPO_PATH.findall(line):
                if "<" not in path and "*" not in path and not (REPO / path).exists():
                    missing.append(f"{page.relative_to(REPO)}:{number}: {path}")
    assert not missing, "paths that no longer exist:\n" + "\n".join(missing)


# ---- the settings page ----------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_settings_doc", REPO / "scripts" / "gen_settings_doc.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def about() -> dict[str, Any]:
    """`target-pinterest-audiences --about --format json`, run as the generator runs it."""
    result: dict[str, Any] = _generator().about()
    return result


def test_the_settings_page_is_current(about: dict[str, Any]) -> None:
    current = (DOCS / "settings.md").read_text(encoding="utf-8")
    assert _generator().render(about) == current, (
        "docs/settings.md is out of date: run python scripts/gen_settings_doc.py"
    )


def test_every_setting_has_a_topic_page_that_names_it(about: dict[str, Any]) -> None:
    gen = _generator()
    properties = about["settings"]["properties"]
    assert gen.untopical(properties) == [], (
        "settings without a topic: add them to TOPICS in scripts/gen_settings_doc.py"
    )
    unnamed = []
    for name in properties:
        target = gen.TOPICS[name][1]
        if target.startswith("https://"):
            continue  # singer-sdk's own settings, documented by the SDK
        page = DOCS / target.partition("#")[0]
        named = re.compile(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`")  # `name`, `name: x`
        if not named.search(page.read_text(encoding="utf-8")):
            unnamed.append(f"{name} (topic {target})")
    assert not unnamed, "settings their topic page does not name: " + ", ".join(unnamed)


def test_the_generator_refuses_a_setting_without_a_topic(about: dict[str, Any]) -> None:
    gen = _generator()
    changed = json.loads(json.dumps(about))
    changed["settings"]["properties"]["brand_new_setting"] = {"type": ["string", "null"]}
    with pytest.raises(SystemExit, match="brand_new_setting"):
        gen.render(changed)


# ---- YAML examples ------------------------------------------------------------------------


def yaml_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number, body) of every ```yaml block."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```yaml":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            yield i + 1, "\n".join(lines[i + 1 : end])


def target_configs(document: Any) -> Iterator[dict[str, Any]]:
    """The config of every loader that is this target or inherits from it."""
    if not isinstance(document, dict):
        return
    loaders = (document.get("plugins") or {}).get("loaders") or document.get("loaders") or []
    for loader in loaders:
        name = loader.get("inherit_from") or loader.get("name", "")
        if name.startswith(mh.LOADER) and loader.get("config"):
            yield loader["config"]


def test_yaml_examples_configure_real_settings(about: dict[str, Any]) -> None:
    settings = set(about["settings"]["properties"])
    unknown = []
    checked = 0
    for page in pages():
        for line, body in yaml_blocks(page.read_text(encoding="utf-8")):
            for config in target_configs(yaml.safe_load(body)):
                checked += 1
                unknown += [
                    f"{page.relative_to(REPO)}:{line}: {key}"
                    for key in config
                    if key not in settings
                ]
    assert checked >= 3, "the YAML examples were not found"
    assert not unknown, "YAML examples set settings the target does not have:\n" + "\n".join(
        unknown
    )


def minimal_project() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("```yaml\n", text.index(_MINIMAL_MARKER)) + len("```yaml\n")
    return text[start : text.index("```", start)]


@pytest.mark.meltano
def test_the_readmes_minimal_project_is_valid_meltano(tmp_path: Path) -> None:
    """Meltano's own schema accepts it, and a secret given in .env reaches the target's config."""
    exe = mh.meltano_executable()
    project = tmp_path / "project"
    project.mkdir()
    (project / "meltano.yml").write_text(minimal_project(), encoding="utf-8")
    assert mh.schema_errors(exe, project / "meltano.yml") == []
    (project / ".env").write_text(
        "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET=from-dotenv\n", encoding="utf-8"
    )
    meltano = mh.Meltano(exe, project, mh.clean_env())
    printed = meltano("--environment=prod", "config", "print", mh.LOADER).stdout
    config = json.loads(printed)
    assert config["ad_account_id"] and config["audience_name"], config
    assert "client_secret" in config, config
