"""Alembic environment and revisions of the tuning-record schema."""
