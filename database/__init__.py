"""The tuning-record store: SQLAlchemy models, Alembic migrations and the record API."""
