"""`status`: reads one CUSTOMER_LIST Audience, its Customer List and the ACTALIKE audiences it
seeds, with the same tokens as `check`, and the confirmed members from the snapshot store
(sync/status.py does the reading).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TextIO

from target_pinterest_audiences.admin.check import explain_refusal
from target_pinterest_audiences.admin.common import (
    ENV_PREFIX,
    _env,
    _is_pinterest_id,
    failure_printer,
    reading_client,
)
from target_pinterest_audiences.pinterest.client import (
    PinterestAPIError,
    TargetError,
)
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
)
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.status import (
    account_table,
    read_account_status,
    read_status,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- status


def _which_audience(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(audience id, audience name): a flag wins; else the settings, where audience_id wins
    over audience_name as in the target."""
    if args.audience_id or args.audience_name:
        return args.audience_id, args.audience_name
    audience_id = _env("AUDIENCE_ID")
    if audience_id:
        return audience_id, None
    name = _env("AUDIENCE_NAME")
    if name and any(p in name for p in ("{stream}", "{segment_name}")):
        return None, None  # a name filled in per stream: every Audience of the account
    return None, name


def run_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print the Audience's and its list's status, the confirmed members, the match rate and
    the actalike audiences it seeds; without an audience, one row for every Audience the
    target keeps for the ad account."""

    fail = failure_printer(err, "status")

    account = args.ad_account_id
    if not account:
        return fail(f"say which ad account: --ad-account-id or {ENV_PREFIX}AD_ACCOUNT_ID", 2)
    audience_id, audience_name = _which_audience(args)
    if audience_id and not _is_pinterest_id(audience_id):
        return fail(f"the audience id must be 1 to 18 digits (0-9), got {audience_id!r}", 2)
    client = reading_client(args, account)
    if isinstance(client, str):
        return fail(client)
    store = SnapshotStore(
        ad_account_id=account,
        logger=logger,
        directory=args.snapshot_path,
        url=args.snapshot_url,
        api_url=args.api_url,
    )
    try:
        if not audience_id and not audience_name:  # every Audience the target keeps
            statuses = read_account_status(client, store, account)
            if args.format == "json":
                print(json.dumps([each.as_json() for each in statuses]), file=out, flush=True)
            else:
                print(account_table(statuses, account, store.where), file=out, flush=True)
            return 0
        status = read_status(
            client, store, account, audience_id=audience_id, audience_name=audience_name
        )
    except PinterestAPIError as exc:
        return fail(explain_refusal(exc, account, ""))
    except (TargetError, AuthError) as exc:  # also retries exhausted, the snapshot store
        return fail(str(exc))
    except Exception as exc:  # no traceback: one line that names the failure
        return fail(f"unexpected {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps(status.as_json()), file=out, flush=True)
    else:
        print(status.table(), file=out, flush=True)
    return 0
