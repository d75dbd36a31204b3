"""Implementations of the identity ports: SQL (SQLAlchemy Core) and in-memory."""
