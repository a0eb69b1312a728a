"""Storage: tables (tables.py), engine and sessions (session.py), SQL (repository.py)."""
