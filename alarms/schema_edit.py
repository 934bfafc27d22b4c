"""Schema changes SQLite's ALTER TABLE cannot make (shared by the migrations of
:mod:`alarms.schema` and the modules that hold their tables)."""

from __future__ import annotations

from typing import Any


def edit_sqlite_table(cur: Any, table: str, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in a SQLite table's stored definition (a change that
    leaves every stored row valid), the procedure SQLite's documentation gives for schema
    changes ALTER TABLE cannot make: in the migration's transaction, with the schema
    version bumped so every connection reloads it."""
    version = cur.execute("PRAGMA schema_version").scalar()
    cur.execute("PRAGMA writable_schema=ON")
    try:
        cur.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
                    "WHERE type = 'table' AND name = ?", (old, new, table))
        cur.execute(f"PRAGMA schema_version={int(version) + 1}")
    finally:
        cur.execute("PRAGMA writable_schema=OFF")
