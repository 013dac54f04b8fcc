"""Seed-batched networks: every parameter has a leading run axis S."""
