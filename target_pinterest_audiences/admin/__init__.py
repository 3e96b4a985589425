"""The admin command (`target-pinterest-audiences-admin`): one module per command."""
