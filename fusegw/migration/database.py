"""The manager's database as the migration's source: each vfolder's quota scope and old limit.

Backend.AI's manager keeps one row per vfolder in its PostgreSQL table `vfolders`
(ai/backend/manager/models/vfolder.py): `id` (uuid), `host` (varchar, the volume as
`<storage proxy>:<volume>`, '' for an unmanaged vfolder), `quota_scope_id` (varchar(64),
`user:<uuid>` or `project:<uuid>`, since 23.03) and `max_size` (integer, MiB, NULL = no limit).
This is what the storage proxy's own v2-to-v3 migration reads; `read_database` reads the same,
read-only, through a server-side cursor, so a manager with millions of vfolders costs the
mapping's memory and no more. It needs no asyncio: psycopg 3's sync connection.

Every failure (a DSN that does not parse, a server that cannot be reached or refuses us, a
database without the table or its columns) is an InvalidParameters with one line that names
the fix; the password is never in it.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fusegw.errors import InvalidParameters

TABLE = "vfolders"
COLUMNS = ("id", "host", "quota_scope_id", "max_size")
"""The columns read (host only to filter by); the manager has had all four since 23.03."""

BATCH = 10_000
"""Rows per round trip of the server-side cursor."""

CONNECT_TIMEOUT = 10
"""Seconds to reach the server, unless the DSN says otherwise."""

_SQLALCHEMY_PREFIX = re.compile(r"^postgres(?:ql)?\+\w+://")


def read_database(dsn: str, host: str | None = None) -> dict[str, tuple[str, int | None]]:
    """Folder hex (uuid.hex, lowercase) -> (quota scope ID, max_size in MiB or None) for every
    vfolder in the manager's `vfolders` table, or only those on `host`: `proxy:volume` as the
    manager names a volume, or a bare volume name (that volume behind any storage proxy).

    Rows without a quota scope (none in a manager since 23.03) are left out: the migration then
    reports their directories as unknown, rather than guessing a scope. A max_size of 0 (or
    below) is no limit, as the manager takes it, and as a `--mapping` file's is.
    """
    dsn = _SQLALCHEMY_PREFIX.sub("postgresql://", dsn.strip())
    params = _parse(dsn)
    where = _describe(params)
    password = str(params.get("password") or "")
    extra: dict[str, Any] = {} if "connect_timeout" in params else {
        "connect_timeout": CONNECT_TIMEOUT}
    try:
        with psycopg.connect(dsn, **extra) as conn:
            conn.read_only = True
            _check_schema(conn, where)
            return _rows(conn, host)
    except InvalidParameters:
        raise
    except psycopg.OperationalError as e:
        raise InvalidParameters(_connect_failure(e, params, where, password)) from None
    except pgerrors.InsufficientPrivilege:
        user = params.get("user") or "the connecting user"
        raise InvalidParameters(
            f"{where}: {user} may not read table {TABLE}: connect as the manager's database "
            f"user, or GRANT SELECT ON {TABLE} TO {user}") from None
    except psycopg.Error as e:
        raise InvalidParameters(
            f"{where}: reading table {TABLE} failed: {_one_line(str(e), password)}") from None


def _parse(dsn: str) -> dict[str, Any]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        # libpq quotes the piece it could not parse, which may be the password: not echoed
        reason = re.sub(r'"[^"]*"', '"…"', _one_line(str(e), ""))
        raise InvalidParameters(
            f"--dsn is not a PostgreSQL connection string ({reason}): write "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
    if not dsn:
        raise InvalidParameters(
            "--dsn is empty: write postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return params


def _describe(params: dict[str, Any]) -> str:
    """`database D on HOST:PORT as USER`, from what the DSN says (never its password)."""
    dbname = params.get("dbname") or params.get("user") or "(default)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    text = f"database {dbname} on {host}:{port}"
    return f"{text} as {params['user']}" if params.get("user") else text


def _connect_failure(e: psycopg.OperationalError, params: dict[str, Any], where: str,
                     password: str) -> str:
    reason = _one_line(str(e), password)
    user = params.get("user") or "the connecting user"
    if "no password supplied" in reason:
        return (f"{where}: the server wants a password for {user}: put the manager's database "
                "password in --dsn (or PGPASSWORD, ~/.pgpass)")
    if "password authentication failed" in reason:
        return (f"{where}: the server refused the password of {user}: put the manager's "
                "database password in --dsn (or PGPASSWORD, ~/.pgpass)")
    if "does not exist" in reason and "database" in reason:
        return (f"{where}: no such database: name the manager's database in --dsn "
                "(its `db.name` in manager.toml)")
    if "role" in reason and "does not exist" in reason:
        return f"{where}: no such user {user}: use the manager's database user in --dsn"
    if "no pg_hba.conf entry" in reason or "authentication" in reason:
        return f"{where}: the server refused {user} ({reason}): check the user in --dsn"
    return (f"cannot reach {where} ({reason}): check the host and port in --dsn and that "
            "the manager's PostgreSQL is running")


def _one_line(text: str, password: str) -> str:
    """libpq's message on one line, the password (should it appear) masked."""
    if password:
        text = text.replace(password, "***")
    text = re.sub(r"^connection (?:failed|is bad): ", "", text.strip())
    return re.sub(r"\s*\n\s*", "; ", text)


def _check_schema(conn: psycopg.Connection[Any], where: str) -> None:
    """The table and its columns as the search path resolves `vfolders`, or one line naming
    what is missing."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)::oid", (TABLE,))
        row = cur.fetchone()
        oid = row[0] if row else None
        if oid is None:
            raise InvalidParameters(
                f"{where} has no table {TABLE}: --dsn must name the Backend.AI manager's "
                "database")
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                    "AND NOT attisdropped", (oid,))
        present = {name for (name,) in cur.fetchall()}
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        raise InvalidParameters(
            f"{where}: table {TABLE} has no column {', '.join(missing)}: upgrade the manager's "
            "schema to 23.03 or later (`backend.ai mgr schema upgrade`) first")


def _rows(conn: psycopg.Connection[Any], host: str | None) -> dict[str, tuple[str, int | None]]:
    # the uuid as 32 lowercase hex digits computed by the server: no uuid.UUID per row here
    query = sql.SQL("SELECT replace(lower(id::text), '-', ''), quota_scope_id::text, "
                    "max_size::bigint FROM {} WHERE quota_scope_id IS NOT NULL").format(
                        sql.Identifier(TABLE))
    args: tuple[str, ...] = ()
    if host is not None:
        if ":" in host:
            query += sql.SQL(" AND host = %s")
        else:
            query += sql.SQL(" AND split_part(host, ':', 2) = %s")
        args = (host,)
    mapping: dict[str, tuple[str, int | None]] = {}
    with conn.cursor(name="fusegw_migrate_vfolders") as cur:
        cur.itersize = BATCH
        cur.execute(query, args)
        for fid, qsid, max_size in cur:
            mapping[fid] = (qsid, max_size if max_size is not None and max_size > 0 else None)
    return mapping
