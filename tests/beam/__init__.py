"""Test package (helpers are imported relatively)."""
