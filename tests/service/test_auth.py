"""The admin token: configured, or generated once into a file that every worker reads."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

from service.auth import resolve_admin_token
from service.config import Settings


def test_configured_token_is_used(tmp_path):
    settings = Settings(admin_token="s3cret", admin_token_file=tmp_path / "t")
    assert resolve_admin_token(settings) == "s3cret"
    assert not (tmp_path / "t").exists()


def test_blank_token_counts_as_unset_and_one_token_is_generated_for_all(tmp_path):
    path = tmp_path / "var" / "admin_token"
    settings = Settings(admin_token="  ", admin_token_file=path)
    with ThreadPoolExecutor(8) as pool:  # several uvicorn workers starting at once
        tokens = set(pool.map(lambda _: resolve_admin_token(settings), range(8)))
    (token,) = tokens
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["admin_token"]  # no staging left over
    assert resolve_admin_token(settings) == token  # kept across restarts


def test_an_empty_token_file_is_replaced(tmp_path):
    path = tmp_path / "admin_token"
    path.write_text("\n")
    token = resolve_admin_token(Settings(admin_token_file=path))
    assert token and path.read_text().strip() == token
