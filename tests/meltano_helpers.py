"""Helpers for the Meltano end-to-end tests: a cached Meltano, cached plugins, projects, PostgreSQL.

Meltano is installed once into its own venv (never the project's: Meltano pins
SQLAlchemy < 2.1, singer-sdk takes 2.1) and the plugins of meltano.yml once into a template
project; both live under a cache directory keyed by what they were built from, so a second
test session reuses them. Each test gets its own Meltano project (meltano.yml, data, system
database) whose `.meltano/extractors` and `.meltano/loaders` link to the template's venvs.

Expected list members are computed here from the source rows with hashlib, independently
of the target's code: emails trimmed and lowercased, MAIDs trimmed and lowercased in
8-4-4-4-12 form, a row with any malformed identifier (or none) skipped.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MELTANO_VERSION = "4.4.1"
LOADER = "target-pinterest-audiences"
#: The Meltano Hub plugin definition users add with `meltano add ... --from-ref`.
PLUGIN_DEFINITION = REPO / "plugin" / "loaders" / f"{LOADER}.yml"
CSV_TAP = "tap-spreadsheets"
PG_TAP = "tap-postgres"
AD_ACCOUNT = "549755885175"
ACCESS_TOKEN = "emu-access-token"  # the dev environment's token, seeded into each emulator
#: Environment prefixes that must not leak from the developer's shell into a test project.
_LEAKY_PREFIXES = ("TARGET_PINTEREST_AUDIENCES_", "TAP_SPREADSHEETS_", "TAP_POSTGRES_", "MELTANO_")


# ---- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where Meltano and the plugin venvs are kept between sessions (ignored by git)."""
    return Path(os.environ.get("TPA_MELTANO_TEST_CACHE", REPO / ".meltano" / "test-cache"))


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One session at a time builds the cache (the lead's suite and a developer's may race)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run_logged(cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> None:
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-6000:]}"
        )


def meltano_executable() -> Path:
    """A Meltano of MELTANO_VERSION: $TPA_MELTANO_BIN, the demo's .venv-meltano, or cached."""
    with cache_lock():
        return _meltano_executable()


def _meltano_executable() -> Path:
    wanted = f"meltano, version {MELTANO_VERSION}"
    candidates = []
    if os.environ.get("TPA_MELTANO_BIN"):
        candidates.append(Path(os.environ["TPA_MELTANO_BIN"]))
    candidates.append(REPO / ".venv-meltano" / "bin" / "meltano")
    venv = cache_dir() / f"meltano-{MELTANO_VERSION}"
    candidates.append(venv / "bin" / "meltano")
    for exe in candidates:
        if exe.exists():
            probe = subprocess.run(
                [str(exe), "--version"], capture_output=True, text=True, timeout=120
            )
            if probe.stdout.strip() == wanted:
                return exe
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    _run_logged([base_python, "-m", "venv", str(venv)], cwd=REPO, env=env, timeout=300)
    _run_logged(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"meltano=={MELTANO_VERSION}"],
        cwd=REPO,
        env=env,
        timeout=900,
    )
    return venv / "bin" / "meltano"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a Meltano command: no leaked settings, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
        MELTANO_DISABLE_TRACKING="true",
        NO_COLOR="1",
    )
    env.update(extra)
    return env


def project_yaml() -> str:
    """meltano.yml as committed, with the loader installed from this checkout by path."""
    text = (REPO / "meltano.yml").read_text(encoding="utf-8")
    rewritten, n = re.subn(r"(?m)^(\s*pip_url:\s*)-e \.\s*$", rf"\g<1>-e {REPO}", text)
    assert n == 1, "meltano.yml should install the loader with `pip_url: -e .`"
    return rewritten


def plugins_template(meltano: Path) -> Path:
    """A Meltano project with every plugin of meltano.yml installed, reused while unchanged."""
    with cache_lock():
        return _plugins_template(meltano)


def _plugins_template(meltano: Path) -> Path:
    yaml_text = project_yaml()
    key = _digest(MELTANO_VERSION, yaml_text, (REPO / "pyproject.toml").read_bytes(), sys.version)
    root = cache_dir() / f"plugins-{key}"
    if (root / ".installed").exists():
        return root
    for stale in cache_dir().glob("plugins-*"):
        shutil.rmtree(stale, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "meltano.yml").write_text(yaml_text, encoding="utf-8")
    _run_logged([str(meltano), "install"], cwd=root, env=clean_env(), timeout=900)
    (root / ".installed").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"), encoding="utf-8")
    return root


def new_project(where: Path, template: Path) -> Path:
    """A fresh project: its own meltano.yml, sample/ and system database, shared plugin venvs."""
    proj = where / "meltano-project"
    (proj / "sample").mkdir(parents=True)
    (proj / ".meltano").mkdir()
    shutil.copy(template / "meltano.yml", proj / "meltano.yml")
    for kind in ("extractors", "loaders"):
        (proj / ".meltano" / kind).symlink_to(template / ".meltano" / kind)
    return proj


class Meltano:
    """Runs Meltano commands in one project and keeps their output for failure messages."""

    def __init__(self, exe: Path, project: Path, env: dict[str, str]) -> None:
        self.exe = exe
        self.project = project
        self.env = env
        self.log = project / "meltano-commands.log"

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.exe), *args],
            cwd=self.project,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(
                f"$ meltano {' '.join(args)}  -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
            )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"meltano {' '.join(args)} exited {proc.returncode}\n--- stdout\n"
                f"{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-8000:]}"
            )
        return proc

    def run(self, extractor: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self("--environment=dev", "run", *extra, extractor, LOADER)

    def state(self, extractor: str) -> dict[str, Any]:
        proc = self("--environment=dev", "state", "get", f"dev:{extractor}-to-{LOADER}")
        value = json.loads(proc.stdout[proc.stdout.index("{") :])
        return value.get("singer_state", value)


_SCHEMA_CHECK = r"""
import json, sys
from pathlib import Path
import jsonschema, yaml
import meltano
schema_file = Path(list(meltano.__path__)[0]) / "schemas" / "meltano.schema.json"
schema = json.loads(schema_file.read_text())
doc = yaml.safe_load(Path(sys.argv[1]).read_text())
validator = jsonschema.validators.validator_for(schema)(schema)
for error in validator.iter_errors(doc):
    print("/".join(map(str, error.path)) + ": " + error.message[:300])
"""


def schema_errors(meltano: Path, meltano_yml: Path) -> list[str]:
    """meltano.yml checked against the JSON schema that ships inside this Meltano."""
    proc = subprocess.run(
        [str(meltano.parent / "python"), "-c", _SCHEMA_CHECK, str(meltano_yml)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


# ---- plugin definitions vs the target's own settings ---------------------------------------

#: JSON-schema type of a setting in `--about` -> the Meltano `kind` that declares it.
_KINDS = {
    "string": "string",
    "integer": "integer",
    "number": "decimal",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def _json_type(prop: Mapping[str, Any]) -> str | None:
    types = prop.get("type")
    if isinstance(types, str):
        return types
    if isinstance(types, list):
        return next((t for t in types if t != "null"), None)
    return None


def setting_problems(
    settings: Sequence[Mapping[str, Any]], properties: Mapping[str, Any], where: str
) -> list[str]:
    """What a plugin definition's `settings` gets wrong about the target's `--about` settings.

    One rule set for the Hub definition and for meltano.yml, so that a setting added to the
    target and forgotten in either file is named, with the file, in the failure.
    """
    problems = []
    declared = {s["name"]: s for s in settings}
    for name in properties.keys() - declared.keys():
        problems.append(
            f"{where}: the target has setting {name!r} (see --about) but no block declares it:"
            " add one with name, kind, label, description (value for a default, options for"
            " a choice, sensitive: true for a secret)"
        )
    for name in declared.keys() - properties.keys():
        problems.append(f"{where}: setting {name!r} is not one the target has: remove it")
    for name in sorted(declared.keys() & properties.keys()):
        setting, prop = declared[name], properties[name]
        at = f"{where}: setting {name!r}"
        if not setting.get("label") or not setting.get("description"):
            problems.append(f"{at} needs a label and a description")
        wanted = "options" if "enum" in prop else _KINDS.get(_json_type(prop) or "")
        if wanted and setting.get("kind") != wanted:
            problems.append(f"{at} has kind {setting.get('kind')!r}, not {wanted!r}")
        if "enum" in prop and [o.get("value") for o in setting.get("options", [])] != prop["enum"]:
            problems.append(f"{at}: options must be {prop['enum']}, in that order")
        if bool(setting.get("sensitive")) != bool(prop.get("secret")):
            problems.append(
                f"{at} must have sensitive: {bool(prop.get('secret'))}"
                " (the target marks its secrets with secret=True)"
            )
        if "default" in prop and setting.get("value") != prop["default"]:
            problems.append(f"{at} needs value: {prop['default']!r} (the target's default)")
        if "default" not in prop and "value" in setting:
            problems.append(f"{at} has a value, but the target has no default")
    return problems


def project_loader(path: Path | None = None) -> dict[str, Any]:
    """The target's plugin entry in a meltano.yml (the project's own by default)."""
    project = yaml.safe_load((path or REPO / "meltano.yml").read_text(encoding="utf-8"))
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == LOADER]
    return dict(loader)


# ---- the sample data and the expected members -------------------------------------------------


def sample_module() -> ModuleType:
    """sample/generate.py, imported by path (sample/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "tpa_sample_generate", REPO / "sample" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _email(value: str) -> str | None:
    email = value.strip().lower()
    if email.count("@") != 1 or re.search(r"\s", email):
        return None
    local, domain = email.split("@")
    if not local or "." not in domain or "" in domain.split("."):
        return None
    return email


def _maid(value: str) -> str | None:
    maid = value.strip().lower()
    return maid if _UUID.fullmatch(maid) else None


def row_hashes(row: Mapping[str, Any]) -> list[str] | None:
    """SHA-256 digests a valid row contributes, or None if the target must skip it."""
    digests = []
    for column, normalize in (("email", _email), ("mobile_ad_id", _maid)):
        raw = row.get(column)
        if raw is None or not str(raw).strip():
            continue
        value = normalize(str(raw))
        if value is None:
            return None
        digests.append(hashlib.sha256(value.encode("utf-8")).hexdigest())
    return digests or None


def apply_rows(
    rows: Iterable[Mapping[str, Any]], members: Iterable[str] = ()
) -> tuple[set[str], int]:
    """Members after the rows are applied in order, and how many rows are skipped."""
    result, skipped = set(members), 0
    for row in rows:
        digests = row_hashes(row)
        if digests is None:
            skipped += 1
        elif row["action"] == "add":
            result.update(digests)
        else:
            result.difference_update(digests)
    return result, skipped


def write_rows(
    module: ModuleType, rows: Sequence[Mapping[str, Any]], path: Path, mtime: float
) -> None:
    """Write an export the way the generator does, with a chosen modification time.

    The tap's bookmark is the newest file's mtime in whole seconds, capped at the start of
    the run: files get mtimes well apart and in the past.
    """
    module.write_csv(rows, path)
    os.utime(path, (mtime, mtime))


# ---- PostgreSQL ------------------------------------------------------------------------------

_PG_SCRIPT = r"""
import json, sys
import psycopg2
req = json.load(sys.stdin)
conn = psycopg2.connect(connect_timeout=5, **req["connect"])
conn.autocommit = True
out = None
with conn.cursor() as cur:
    for sql, params, many in req["statements"]:
        if many:
            cur.executemany(sql, params)
        else:
            cur.execute(sql, params)
        if cur.description is not None:
            out = [list(row) for row in cur.fetchall()]
conn.close()
json.dump(out, sys.stdout, default=str)
"""


class Postgres:
    """SQL through the tap's own psycopg2 (the project needs no database driver of its own).

    Connection parameters come from the standard PG* variables (libpq reads them).
    """

    def __init__(self, python: Path, env: Mapping[str, str], dbname: str | None = None) -> None:
        self.python = python
        self.env = dict(env)
        self.dbname = dbname

    def execute(self, *statements: tuple[str, Any, bool] | str) -> Any:
        norm = [(s, None, False) if isinstance(s, str) else s for s in statements]
        connect = {"dbname": self.dbname} if self.dbname else {}
        proc = subprocess.run(
            [str(self.python), "-c", _PG_SCRIPT],
            input=json.dumps({"connect": connect, "statements": norm}),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                proc.stderr.strip().splitlines()[-1] if proc.stderr else "psql failed"
            )
        return json.loads(proc.stdout)
