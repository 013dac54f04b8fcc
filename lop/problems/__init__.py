"""Problem generators (data streams and targets)."""
