"""Migration discovery refuses inconsistent sql/ folders before touching a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.db.migrations import discover
from shared.errors import MigrationError
from shared.settings import REPO_ROOT


def _write(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("SELECT 1;")


def test_the_repository_migrations_are_consistent() -> None:
    migrations = discover(REPO_ROOT / "sql")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.up_sql.strip() and m.down_sql.strip() for m in migrations)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0001_a.up.sql"], "no down file"),
        (
            ["0001_a.up.sql", "0001_a.down.sql", "0003_c.up.sql", "0003_c.down.sql"],
            "0002 is missing",
        ),
        (
            ["0001_a.up.sql", "0001_a.down.sql", "0001_b.up.sql", "0001_b.down.sql"],
            "two migrations",
        ),
        (["1_a.up.sql"], "unexpected file"),
    ],
)
def test_inconsistent_folders_are_refused(tmp_path: Path, files: list[str], message: str) -> None:
    _write(tmp_path, *files)
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)
