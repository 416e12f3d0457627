"""atk_bringup."""
