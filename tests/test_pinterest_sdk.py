"""Pinterest's official Python SDK (pinterest-api-sdk) drives the emulator.

Why: the emulator is only worth trusting if a client nobody here wrote gets through it: the SDK
sends requests the way Pinterest's generated client does (``ad_account_id`` in every body and in
the rule) and parses the answers into its own models. It runs as its own process, pointed at the
emulator the way a user points it at Pinterest: ``PINTEREST_API_URI`` and
``PINTEREST_ACCESS_TOKEN``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from target_pinterest_audiences.emulator import Emulator

ACCOUNT = "549755885175"
TOKEN = "emu-access-token"

SDK_SCRIPT = r"""
import json, os
from pinterest.ads.audiences import Audience
from pinterest.ads.customer_lists import CustomerList

account = os.environ["SDK_TEST_ACCOUNT"]
records = json.loads(os.environ["SDK_TEST_RECORDS"])
out = {}
customer_list = CustomerList.create(
    ad_account_id=account, name="sdk list", records=",".join(records[:120]), list_type="EMAIL"
)
out["list_id"] = customer_list.id
customer_list.add_record(",".join(records[120:]))
customer_list.remove_record(records[0])
seed = Audience.create(
    ad_account_id=account,
    name="sdk customers",
    rule={"customer_list_id": customer_list.id},
    audience_type="CUSTOMER_LIST",
)
actalike = Audience.create(
    ad_account_id=account,
    name="sdk customers US 5%",
    rule={"seed_id": [seed.id], "country": "US", "percentage": 5},
    audience_type="ACTALIKE",
)
for key, audience in (("seed", seed), ("actalike", actalike)):
    again = Audience(ad_account_id=account, audience_id=audience.id)
    out[key] = {
        "id": again.id,
        "name": again.name,
        "audience_type": again.audience_type,
        "status": again.status,
        "size": again.size,
        "seed_id": list(again.rule.get("seed_id", [])),
        "country": again.rule.get("country"),
        "percentage": again.rule.get("percentage"),
        "customer_list_id": again.rule.get("customer_list_id"),
    }
again = CustomerList(ad_account_id=account, customer_list_id=customer_list.id)
out["list"] = {
    "name": again.name,
    "status": again.status,
    "num_batches": again.num_batches,
    "num_uploaded_user_records": again.num_uploaded_user_records,
    "num_removed_user_records": again.num_removed_user_records,
}
lists, _ = CustomerList.get_all(ad_account_id=account)
out["listed_lists"] = [item.id for item in lists]
audiences, _ = Audience.get_all(ad_account_id=account)
out["listed_audiences"] = sorted((item.name, item.audience_type) for item in audiences)
print(json.dumps(out))
"""


def test_pinterest_sdk_creates_lists_and_audiences_against_the_emulator(tmp_path: Path) -> None:
    records = [hashlib.sha256(f"sdk-{i}@example.com".encode()).hexdigest() for i in range(150)]
    with Emulator(ad_accounts=(ACCOUNT,), access_token=TOKEN) as emu:
        env = {
            **os.environ,
            "PINTEREST_API_URI": emu.api_url,
            "PINTEREST_ACCESS_TOKEN": TOKEN,
            "SDK_TEST_ACCOUNT": ACCOUNT,
            "SDK_TEST_RECORDS": json.dumps(records),
        }
        # The SDK loads a .env file from its working directory: a fresh one has none.
        done = subprocess.run(
            [sys.executable, "-c", SDK_SCRIPT],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        state = emu.state()
    sdk_list = next(item for item in state["lists"] if item["id"] == out["list_id"])
    assert len(sdk_list["members"]) == 149  # 150 added, one removed
    assert out["list"] == {
        "name": "sdk list",
        "status": "READY",
        "num_batches": 3,
        "num_uploaded_user_records": 150,
        "num_removed_user_records": 1,
    }
    assert out["seed"]["audience_type"] == "CUSTOMER_LIST"
    assert out["seed"]["customer_list_id"] == out["list_id"]
    assert out["seed"]["status"] == "READY"
    assert out["seed"]["size"] == 149
    assert out["actalike"]["audience_type"] == "ACTALIKE"
    assert out["actalike"]["seed_id"] == [out["seed"]["id"]]
    assert (out["actalike"]["country"], out["actalike"]["percentage"]) == ("US", 5)
    assert out["actalike"]["status"] == "READY"
    assert out["actalike"]["size"] > 0
    assert out["listed_lists"] == [out["list_id"]]
    assert out["listed_audiences"] == [
        ["sdk customers", "CUSTOMER_LIST"],
        ["sdk customers US 5%", "ACTALIKE"],
    ]
