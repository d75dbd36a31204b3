"""Adapters of the conversation store: SQL (the source of truth) and in-memory."""
