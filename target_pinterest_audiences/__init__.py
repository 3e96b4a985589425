"""Singer target that keeps a Pinterest Customer List and its Audience in sync."""
