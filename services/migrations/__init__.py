"""Alembic revisions of Courier's one SQL schema; run them through ``services.migrate``."""
