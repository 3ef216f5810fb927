"""``--db`` / ``BESEDA_DB``: a ``postgresql://`` URL picks PostgreSQL, anything else is a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda.cli import _parser
from beseda.server.app import describe_db, open_storage
from beseda.server.config import Settings, from_environment, parse_db
from beseda.storage.postgres import PostgresStorage, redact
from beseda.storage.sqlite import SQLiteStorage


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://beseda@db/beseda", "postgresql://beseda@db/beseda"),
        ("postgres://u:p@h:5433/d?sslmode=require", "postgres://u:p@h:5433/d?sslmode=require"),
        ("/var/lib/beseda/beseda.db", Path("/var/lib/beseda/beseda.db")),
        ("chat.db", Path("chat.db")),
        ("postgresql.db", Path("postgresql.db")),
    ],
)
def test_a_url_stays_text_and_anything_else_is_a_path(text: str, expected: object) -> None:
    assert parse_db(text) == expected
    assert from_environment({"BESEDA_DB": text}).db == expected
    assert _parser().parse_args(["serve", "--db", text]).db == expected


def test_open_storage_picks_the_engine_from_the_setting(tmp_path: Path) -> None:
    assert isinstance(open_storage(Settings(db=tmp_path / "b.db")), SQLiteStorage)
    store = open_storage(Settings(db="postgresql://beseda:secret@127.0.0.1:1/beseda"))
    assert isinstance(store, PostgresStorage)
    assert "secret" not in repr(store)


def test_the_password_of_a_url_is_never_shown() -> None:
    assert redact("postgresql://beseda:s3cr%40t@db:5432/x") == "postgresql://beseda:***@db:5432/x"
    assert describe_db("postgresql://beseda:pw@db/x") == "postgresql://beseda:***@db/x"
    assert describe_db("postgresql://beseda@db/x") == "postgresql://beseda@db/x"
    assert describe_db(Path("/srv/beseda.db")) == "/srv/beseda.db"


def test_files_beside_the_database_go_to_the_data_directory_on_postgresql(
    tmp_path: Path,
) -> None:
    assert Settings(db=tmp_path / "x" / "b.db").data_dir == tmp_path / "x"
    assert Settings(db="postgresql://db/beseda").data_dir.name == "beseda"
