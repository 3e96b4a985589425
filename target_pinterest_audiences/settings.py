"""The settings: their schema (the one source of `--about`, the defaults and the plugin
definition's test) and the rules that tie several settings together."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from singer_sdk import typing as th

from target_pinterest_audiences.identifiers import EXTERNAL_ID_TYPES
from target_pinterest_audiences.pinterest.tokens import default_token_cache_path
from target_pinterest_audiences.urls import api_url_problem

DEFAULT_API_URL = "https://api.pinterest.com/v5"
SECRET_SETTINGS = ("access_token", "refresh_token", "client_id", "client_secret", "snapshot_url")
LIST_TYPES = ("auto", "EMAIL", "IDFA", "MAID")
SYNC_MODES = ("events", "mirror")
PINTEREST_ID = r"^[0-9]{1,18}$"
#: Where Pinterest makes ACTALIKE audiences and how large (AudienceRule in Pinterest's OpenAPI
#: description: "Valid countries include: US, CA, and GB. Percentage should be 1-10.").
ACTALIKE_COUNTRIES = ("US", "CA", "GB")
ACTALIKE_PERCENTAGE_MIN, ACTALIKE_PERCENTAGE_MAX = 1, 10

SCHEMA: dict[str, Any] = th.PropertiesList(
    th.Property(
        "ad_account_id",
        th.StringType(pattern=PINTEREST_ID),
        required=True,
        title="Ad account id",
        description="The Pinterest ad account (digits) that owns the list and the Audience.",
    ),
    th.Property(
        "audience_name",
        th.StringType,
        title="Audience name",
        description=(
            "Name of the CUSTOMER_LIST Audience to create or adopt. Required unless "
            "audience_id is set (here or for each stream under `audiences`). May hold "
            "{stream} and {segment_name}, filled in per stream."
        ),
    ),
    th.Property(
        "audience_id",
        th.StringType(pattern=PINTEREST_ID),
        title="Audience id",
        description=(
            "An existing CUSTOMER_LIST Audience to keep in sync; its rule names the Customer "
            "List that is updated."
        ),
    ),
    th.Property(
        "audience_description",
        th.StringType,
        title="Audience description",
        description="Description given to a newly created Audience.",
    ),
    th.Property(
        "actalike_audiences",
        th.ArrayType(
            th.ObjectType(
                th.Property(
                    "country",
                    th.StringType(allowed_values=list(ACTALIKE_COUNTRIES)),
                    required=True,
                    description="Where the lookalike Pinners are: US, CA or GB.",
                ),
                th.Property(
                    "percentage",
                    th.IntegerType(
                        minimum=ACTALIKE_PERCENTAGE_MIN, maximum=ACTALIKE_PERCENTAGE_MAX
                    ),
                    required=True,
                    description="Size, as a share of the country's Pinners: 1 to 10.",
                ),
                th.Property(
                    "name",
                    th.StringType,
                    description=(
                        "The actalike audience's name (default: the Audience's name, the "
                        "country and the percentage, e.g. 'VIP customers US 5%')."
                    ),
                ),
                additional_properties=False,
            )
        ),
        title="Actalike audiences",
        description=(
            "ACTALIKE (lookalike) audiences seeded with the Audience, each "
            '{"country": "US", "percentage": 5, "name": optional}: after each run the target '
            "creates the missing ones and adopts existing ones by name. A seed needs 100 "
            "matched users first: until then Pinterest refuses, the run warns and the next run "
            "tries again. See docs/actalike.md."
        ),
    ),
    th.Property(
        "access_token",
        th.StringType,
        secret=True,
        title="Access token",
        description=(
            "Pinterest OAuth access token (scopes ads:read, ads:write). Works alone until it "
            "expires; with refresh_token, client_id and client_secret it is renewed."
        ),
    ),
    th.Property(
        "refresh_token",
        th.StringType,
        secret=True,
        title="Refresh token",
        description=(
            "Pinterest continuous refresh token. Each refresh returns a new one, which the "
            "target saves to token_cache_path and prefers on later runs."
        ),
    ),
    th.Property(
        "client_id",
        th.StringType,
        secret=True,
        title="App id (client_id)",
        description="Your Pinterest app's id, needed to refresh tokens.",
    ),
    th.Property(
        "client_secret",
        th.StringType,
        secret=True,
        title="App secret (client_secret)",
        description="Your Pinterest app's secret key, needed to refresh tokens.",
    ),
    th.Property(
        "token_cache_path",
        th.StringType,
        title="Token file",
        description=(
            "Where the newest token pair is kept (mode 0600). Default: "
            "~/.config/target-pinterest-audiences/tokens-<ad_account_id>.json "
            "($XDG_CONFIG_HOME respected)."
        ),
    ),
    th.Property(
        "api_url",
        th.StringType,
        default=DEFAULT_API_URL,
        title="API base URL",
        description=(
            "Pinterest API v5 base URL (https); plain http:// is accepted only for a loopback "
            "address, such as the local emulator."
        ),
    ),
    th.Property(
        "on_invalid_record",
        th.StringType(allowed_values=["fail", "skip"]),
        default="fail",
        title="On invalid record",
        description=(
            "fail: stop before writing the batch holding an invalid record and exit non-zero; "
            "skip: drop it, count it by reason, and go on."
        ),
    ),
    th.Property(
        "rejected_records_path",
        th.StringType,
        title="Rejected records file",
        description=(
            "With on_invalid_record=skip: append every skipped record to this file as one "
            "JSON line (record_number, stream, keys: the stream's key properties and their "
            "values, field, reason), to find the rows to fix. Identifier values are never "
            "written. The file is kept private (mode 0600)."
        ),
    ),
    th.Property(
        "dry_run",
        th.BooleanType,
        default=False,
        title="Dry run",
        description=(
            "Validate, normalize, hash and report what would be created, added and removed, "
            "without any write request."
        ),
    ),
    th.Property(
        "sync_mode",
        th.StringType(allowed_values=list(SYNC_MODES)),
        default="events",
        title="Sync mode",
        description=(
            "events: every record says add or remove, and exactly that is sent. mirror: "
            "the records of a run are the whole audience (action optional; 'remove' means "
            "not a member); after the input was read completely, members no longer in the "
            "source are removed, and only the difference from the snapshot is sent."
        ),
    ),
    th.Property(
        "suppression_streams",
        th.ArrayType(th.StringType),
        title="Suppression streams",
        description=(
            "Streams whose records are opt-outs (standard identifier fields; no segment_name "
            "or action): each identifier is suppressed, removed from every Customer List in "
            "the snapshot store and never added again, in this run and later ones. Kept "
            "hashed in the snapshot store. In mirror mode such a stream is the whole "
            "suppression set: absent identifiers are lifted."
        ),
    ),
    th.Property(
        "snapshot_path",
        th.StringType,
        title="Snapshot directory",
        description=(
            "Directory of the snapshot files (SQLite, one per ad account and Customer "
            "List): the identifiers Pinterest confirmed, which mirror runs diff against. "
            "Default: $XDG_STATE_HOME/target-pinterest-audiences, else "
            "~/.local/state/target-pinterest-audiences."
        ),
    ),
    th.Property(
        "snapshot_url",
        th.StringType,
        secret=True,
        title="Snapshot database URL",
        description=(
            "A SQLAlchemy URL of a PostgreSQL database to keep the snapshot in instead of "
            "files (for runners without a persistent disk), e.g. "
            "postgresql://user:password@host:5432/db. Needs the postgres extra."
        ),
    ),
    th.Property(
        "max_removal_fraction",
        th.NumberType(minimum=0, maximum=1),
        default=0.2,
        title="Max removal fraction",
        description=(
            "Mirror mode: when a run would remove more than this fraction of the "
            "snapshot's members, it adds, removes nothing, and exits non-zero saying so."
        ),
    ),
    th.Property(
        "allow_large_removal",
        th.BooleanType,
        default=False,
        title="Allow large removal",
        description=(
            "Mirror mode: let one run remove more than max_removal_fraction of the "
            "members (or all of them, for an empty source). Set it for one run only."
        ),
    ),
    th.Property(
        "identifiers_per_request",
        th.IntegerType(minimum=1, maximum=100_000),
        default=10_000,
        title="Identifiers per request",
        description="Hashed identifiers sent in one create/update request.",
    ),
    th.Property(
        "checkpoint_interval_seconds",
        th.NumberType(minimum=0),
        default=60,
        title="Checkpoint interval (s)",
        description=(
            "Identifiers wait until they fill a whole request, so adds and removes each go "
            "out in full requests; at least this often, partial requests are sent too and "
            "a STATE checkpoint is written. 0: checkpoint after every batch."
        ),
    ),
    th.Property(
        "progress_interval_seconds",
        th.NumberType(minimum=0),
        default=30,
        title="Progress interval (s)",
        description=(
            "How often a progress line is logged during a run: records read and skipped, "
            "identifiers confirmed added and removed, requests, records per second, and the "
            "time spent waiting on the write limit and on Pinterest. 0: no progress lines."
        ),
    ),
    th.Property(
        "list_type",
        th.StringType(allowed_values=list(LIST_TYPES)),
        default="auto",
        title="Customer List type",
        description=(
            "list_type of a new Customer List. auto: MAID or IDFA when the first upload holds "
            "only that kind of id, else EMAIL (Pinterest's default)."
        ),
    ),
    th.Property(
        "external_id_type",
        th.StringType(allowed_values=list(EXTERNAL_ID_TYPES)),
        title="External id type",
        description=(
            "What the records' external_id field holds: LR_ID (LiveRamp), DLX_ID "
            "(Datalogix) or HASHED_PINNER_ID (a hex SHA-256, SHA-1 or MD5 digest). Sent as "
            "given, never hashed; the list a run of external ids creates gets this "
            "list_type. A run sends external ids or email/MAID/IDFA identifiers, not both."
        ),
    ),
    th.Property(
        "max_writes_per_minute",
        th.IntegerType(minimum=1),
        default=400,
        title="Max writes per minute",
        description=(
            "Client-side cap on write calls in any 60-second window (Pinterest's Standard "
            "ads-write limit is about 400/minute), shared by every stream of a run and by every "
            "run that uses the same token file (a window file beside it): parallel jobs each "
            "set to 400 send at most 400 writes a minute together."
        ),
    ),
    th.Property(
        "max_concurrent_writes",
        th.IntegerType(minimum=1, maximum=10),
        default=4,
        title="Concurrent writes",
        description=(
            "How many update requests may be in flight at once for the whole run (its "
            "streams take turns), so that Pinterest's answer time does not cap throughput "
            "below the write limit. Within a stream an ADD never overlaps a REMOVE. 1: "
            "strictly one request at a time."
        ),
    ),
    th.Property(
        "max_reads_per_minute",
        th.IntegerType(minimum=1),
        default=1000,
        title="Max reads per minute",
        description="Client-side cap on read calls in any 60-second window.",
    ),
    th.Property(
        "retry_max_seconds",
        th.NumberType(minimum=0),
        default=900,
        title="Retry time budget (s)",
        description=(
            "How long one request is retried on 429, 5xx, timeouts and dropped connections "
            "before the run gives up."
        ),
    ),
    th.Property(
        "retry_base_delay_seconds",
        th.NumberType(minimum=0),
        default=1.0,
        title="Retry base delay (s)",
        description="First backoff ceiling; each retry doubles it (full jitter).",
    ),
    th.Property(
        "retry_max_delay_seconds",
        th.NumberType(minimum=0),
        default=60.0,
        title="Retry max delay (s)",
        description="Upper bound of one backoff wait (a longer Retry-After is still honoured).",
    ),
    th.Property(
        "request_timeout_seconds",
        th.NumberType(minimum=1),
        default=60.0,
        title="Request timeout (s)",
        description="Timeout of one HTTP request.",
    ),
).to_dict()

#: What an entry of the `audiences` setting may set for its stream (the rest is run-wide).
PER_STREAM_SETTINGS = (
    "audience_name",
    "audience_id",
    "audience_description",
    "sync_mode",
    "max_removal_fraction",
    "allow_large_removal",
    "list_type",
    "external_id_type",
    "actalike_audiences",
)


def _per_stream_schema() -> dict[str, Any]:
    """An `audiences` entry: the top-level settings of the same names, without defaults (a
    missing key takes the top-level value)."""
    properties = {}
    for key in PER_STREAM_SETTINGS:
        prop = {k: v for k, v in SCHEMA["properties"][key].items() if k != "default"}
        properties[key] = prop
    return {"type": ["object", "null"], "properties": properties, "additionalProperties": False}


SCHEMA["properties"]["audiences"] = {
    "type": ["object", "null"],
    "title": "Audiences per stream",
    "description": (
        "One entry per stream (its name after stream maps): the Audience it syncs and how "
        "(audience_name, audience_id, audience_description, sync_mode, max_removal_fraction, "
        "allow_large_removal, list_type, external_id_type, actalike_audiences). Each stream "
        "of a run syncs its own Customer List and Audience; the top-level settings are every "
        "stream's defaults."
    ),
    "additionalProperties": _per_stream_schema(),
}


def default(key: str) -> Any:
    """A setting's default, from the schema above (the one place the defaults live)."""
    return SCHEMA["properties"][key].get("default")


def token_path(config: Mapping[str, Any]) -> Path:
    """Where the token file is: token_cache_path, else the per-account default."""
    raw = config.get("token_cache_path")
    if raw:
        return Path(str(raw)).expanduser()
    return default_token_cache_path(str(config.get("ad_account_id") or "unknown"))


def cross_setting_errors(config: Mapping[str, Any]) -> list[str]:
    """What the schema alone cannot say: rules over several settings and the credentials."""
    errors: list[str] = []
    audiences = config.get("audiences") or {}
    entries = [("", config)]
    entries += [(f"audiences.{k}.", v) for k, v in audiences.items() if isinstance(v, Mapping)]
    for where, entry in entries:
        name = entry.get("audience_name")
        if isinstance(name, str) and name and not name.strip():
            errors.append(f"setting '{where}audience_name' is blank: give the Audience a name")
    named = config.get("audience_name") or config.get("audience_id")
    if not audiences and not named and not config.get("suppression_streams"):
        errors.append(
            "setting 'audience_name' is required unless 'audience_id' names an existing "
            "Audience (or the `audiences` setting names one per stream)"
        )
    for where, entry in entries:
        errors.extend(actalike_errors(entry.get("actalike_audiences"), where))
    api_url_error = api_url_problem(config.get("api_url") or DEFAULT_API_URL, "setting 'api_url'")
    if api_url_error:
        errors.append(api_url_error)
    refresh_parts = {
        k: bool(config.get(k)) for k in ("refresh_token", "client_id", "client_secret")
    }
    missing_refresh = [k for k, present in refresh_parts.items() if not present]
    has_file = token_path(config).exists()
    needs_credentials = not config.get("dry_run") and not config.get("access_token")
    if needs_credentials and not has_file and missing_refresh:
        errors.append(
            "credentials: set 'access_token', or all of 'refresh_token', 'client_id' and "
            "'client_secret' (missing: " + ", ".join(missing_refresh) + "), or connect "
            "with `target-pinterest-audiences-admin connect` to create the token file "
            f"({token_path(config)})"
        )
    return errors


def actalike_errors(value: Any, prefix: str = "") -> list[str]:
    """Beyond the schema: no blank name, and no two entries for one name or one country and
    percentage (one of them would adopt the other's audience)."""
    if not isinstance(value, list):
        return []
    errors: list[str] = []
    rules: set[tuple[Any, Any]] = set()
    names: set[str] = set()
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            continue  # the schema says what is wrong
        where = f"setting '{prefix}actalike_audiences.{index}'"
        name = entry.get("name")
        if isinstance(name, str) and not name.strip():
            errors.append(f"{where}: 'name' is blank; give a name or leave it out")
        rule = (entry.get("country"), entry.get("percentage"))
        if rule in rules:
            errors.append(
                f"{where}: a second entry for country {rule[0]} and percentage {rule[1]}; keep one"
            )
        rules.add(rule)
        if isinstance(name, str) and name.strip():
            if name in names:
                errors.append(f"{where}: a second entry named {name!r}; names must differ")
            names.add(name)
    return errors
