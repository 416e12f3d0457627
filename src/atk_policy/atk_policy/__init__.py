"""atk_policy."""
