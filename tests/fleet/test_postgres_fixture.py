"""The private PostgreSQL of the tests: its own server, one database per test, and a clear
failure (never a skip) when its binaries are missing."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer, find_bindir


def test_missing_binaries_fail_saying_how_to_install_them(tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version directory without the tools
    with pytest.raises(AssertionError, match=r"`make test` installs them"):
        find_bindir(search_path=str(tmp_path), roots=(tmp_path,))


def test_each_test_gets_an_empty_database_on_a_unix_socket_only(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert tables == (0,)
    assert listen == ("",)
    assert str(postgres_server.socket_dir) in postgres_dsn
