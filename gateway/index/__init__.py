"""The SQL index of stored instances (SQLAlchemy 2, migrations with Alembic)."""
