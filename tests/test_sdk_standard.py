"""singer-sdk's standard target tests: odd but legal Singer input must not break the target.

They run in-process in dry-run mode without credentials (no network), with invalid records
skipped: the standard streams carry none of our audience fields, so every record is counted
as skipped, and what is checked is that the target copes with the message shapes.
"""

from __future__ import annotations

from singer_sdk.testing import get_target_test_class

from target_pinterest_audiences.target import TargetPinterestAudiences

StandardTargetTests = get_target_test_class(
    TargetPinterestAudiences,
    config={
        "ad_account_id": "549755885175",
        "audience_name": "standard tests {stream}",
        "dry_run": True,
        "on_invalid_record": "skip",
        "token_cache_path": "/nonexistent/tokens.json",
    },
)


class TestStandardTargetTests(StandardTargetTests):  # type: ignore[misc,valid-type]
    """Collected by pytest."""
