"""Sequence models compared by titans-bench."""
