"""atk_perception."""
