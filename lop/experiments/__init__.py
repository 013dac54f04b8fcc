"""Experiments of the paper; each module defines EXPERIMENT (auto-discovered)."""
