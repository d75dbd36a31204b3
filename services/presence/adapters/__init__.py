"""Adapters of the presence store: in-memory now, Redis in the distributed mode."""
