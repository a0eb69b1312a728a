import pytest


@pytest.fixture(autouse=True)
def _empty_tables_after_each_test(clean_tables: None) -> None:
    """Every api test runs once per database (sqlite, postgresql) and leaves it empty."""
