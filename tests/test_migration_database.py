"""`read_database` against a real PostgreSQL server holding the manager's vfolders table
(tests/postgres_fixture.py): rows mapped, NULL limits, the host filter, 50,000 rows streamed in
batches, and the failures as one line naming the fix, never with the password."""

from __future__ import annotations

import re
import time
import tracemalloc
import uuid

import pytest
from postgres_fixture import PostgresServer, postgres_server

from fusegw.errors import InvalidParameters
from fusegw.migration import database
from fusegw.migration.database import read_database

__all__ = ["postgres_server"]  # the fixture, imported for pytest

HOST = "local:volume1"
USER = "user:" + str(uuid.UUID(int=1))
PROJECT = "project:" + str(uuid.UUID(int=2))


@pytest.fixture
def pg(postgres_server: PostgresServer) -> PostgresServer:
    postgres_server.reset()
    return postgres_server


def failure(dsn: str, password: str) -> str:
    with pytest.raises(InvalidParameters) as info:
        read_database(dsn)
    text = info.value.detail
    assert "\n" not in text, text
    assert password not in text, text
    assert password not in str(info.value), text
    assert info.value.__cause__ is None, "the driver's exception (it may hold the DSN)"
    assert info.value.__context__ is None or info.value.__suppress_context__
    return text


def test_rows_mapped(pg: PostgresServer) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pg.insert([(a, HOST, USER, 1024), (b, HOST, PROJECT, None), (c, HOST, USER, 0)])
    # 0: no limit, as the manager (and a --mapping file) takes it
    assert read_database(pg.dsn) == {a.hex: (USER, 1024), b.hex: (PROJECT, None),
                                     c.hex: (USER, None)}


def test_hex_is_lowercase_without_dashes(pg: PostgresServer) -> None:
    fid = uuid.uuid4()
    pg.insert([(str(fid).upper(), HOST, USER, 5)])
    (key,) = read_database(pg.dsn)
    assert key == fid.hex and re.fullmatch(r"[0-9a-f]{32}", key)


def test_null_max_size_is_none(pg: PostgresServer) -> None:
    fid = uuid.uuid4()
    pg.insert([(fid, HOST, USER, None)])
    assert read_database(pg.dsn) == {fid.hex: (USER, None)}


def test_host_filter(pg: PostgresServer) -> None:
    here, there, elsewhere, unmanaged = (uuid.uuid4() for _ in range(4))
    pg.insert([(here, "local:volume1", USER, 1), (there, "local:volume2", USER, 2),
               (elsewhere, "remote:volume1", PROJECT, 3), (unmanaged, "", USER, None)])
    assert read_database(pg.dsn, "local:volume1") == {here.hex: (USER, 1)}
    assert read_database(pg.dsn, "local:volume2") == {there.hex: (USER, 2)}
    assert read_database(pg.dsn, "local:nothing") == {}
    # a bare volume name: that volume behind any storage proxy
    assert read_database(pg.dsn, "volume1") == {here.hex: (USER, 1),
                                                 elsewhere.hex: (PROJECT, 3)}
    assert len(read_database(pg.dsn)) == 4


def test_sqlalchemy_style_dsn(pg: PostgresServer) -> None:
    fid = uuid.uuid4()
    pg.insert([(fid, HOST, USER, 7)])
    dsn = pg.dsn.replace("postgresql://", "postgresql+asyncpg://")
    assert read_database(dsn) == {fid.hex: (USER, 7)}


def test_read_only(pg: PostgresServer) -> None:
    """A read-only transaction (the server's statement log shows it): the manager's database
    is never written."""
    pg.insert([(uuid.uuid4(), HOST, USER, 1)])
    log_start = pg.log.stat().st_size
    read_database(pg.dsn)
    log = pg.log.read_bytes()[log_start:].decode(errors="replace")
    assert "BEGIN READ ONLY" in log, log


def test_many_rows_streamed(pg: PostgresServer) -> None:
    """50,000 rows read through the server-side cursor in batches of database.BATCH (the
    server's statement log shows the FETCHes), in bounded time and memory."""
    n = 50_000
    ids = [uuid.uuid4() for _ in range(n)]
    t0 = time.monotonic()
    pg.insert((fid, HOST, USER if i % 3 else PROJECT, None if i % 5 == 0 else i)
              for i, fid in enumerate(ids))
    insert_s = time.monotonic() - t0
    log_start = pg.log.stat().st_size

    tracemalloc.start()
    try:
        t0 = time.monotonic()
        mapping = read_database(pg.dsn, HOST)
        read_s = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(mapping) == n
    assert mapping[ids[0].hex] == (PROJECT, None)
    assert mapping[ids[7].hex] == (USER, 7)
    assert sum(1 for _, size in mapping.values() if size is None) == n // 5
    print(f"\n{n:,} rows: COPY in {insert_s:.2f} s, read_database in {read_s:.2f} s "
          f"({n / read_s:,.0f} rows/s), traced peak {peak / 2**20:.1f} MiB")
    assert read_s < 15, f"{n:,} rows took {read_s:.1f} s"
    # the mapping itself (~200 B a row: key, value tuple, scope string) and a batch of rows in
    # flight, not all 50,000 rows twice over
    assert peak < n * 400 + 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"

    log = pg.log.read_bytes()[log_start:].decode(errors="replace")
    fetches = re.findall(r"FETCH FORWARD (\d+)", log)
    assert "DECLARE" in log and fetches, "not a server-side cursor"
    assert {int(f) for f in fetches} == {database.BATCH}
    assert len(fetches) == n // database.BATCH + 1


def test_bad_password(pg: PostgresServer) -> None:
    wrong = "not-the-password-42"
    text = failure(pg.dsn_with(password=wrong), wrong)
    assert pg.password not in text
    assert "refused the password of postgres" in text and "--dsn" in text, text


def test_wrong_port(pg: PostgresServer) -> None:
    from conftest import free_port

    port = free_port()
    text = failure(pg.dsn_with(port=port), pg.password)
    assert text.startswith(f"cannot reach database backend on 127.0.0.1:{port}"), text
    assert "check the host and port in --dsn" in text, text


def test_missing_database(pg: PostgresServer) -> None:
    text = failure(pg.dsn_with(dbname="nosuchdb"), pg.password)
    assert "no such database" in text and "--dsn" in text, text


def test_missing_table(pg: PostgresServer) -> None:
    """The server's own `postgres` database has no vfolders table."""
    text = failure(pg.dsn_with(dbname="postgres"), pg.password)
    assert text == (f"database postgres on 127.0.0.1:{pg.port} as postgres has no table "
                    "vfolders: --dsn must name the Backend.AI manager's database"), text


def test_missing_columns(pg: PostgresServer) -> None:
    """A manager schema older than 23.03: vfolders without quota_scope_id."""
    pg.execute("CREATE DATABASE legacy", dbname="postgres")
    try:
        pg.execute("CREATE TABLE vfolders (id uuid PRIMARY KEY, host varchar(128) NOT NULL, "
                   "max_size integer)", dbname="legacy")
        text = failure(pg.dsn_with(dbname="legacy"), pg.password)
    finally:
        pg.execute("DROP DATABASE legacy", dbname="postgres")
    assert "table vfolders has no column quota_scope_id: upgrade the manager's schema" \
        in text, text


@pytest.mark.parametrize("dsn", ["postgresql://u:sekrit-pw@h/db?bogus=1",
                                 "postgresql//u:sekrit-pw@h/db", "sekrit-pw", ""])
def test_bad_dsn(dsn: str) -> None:
    text = failure(dsn, "sekrit-pw")
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in text, text


def test_read_permission_refused(pg: PostgresServer) -> None:
    pg.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
    try:
        dsn = f"postgresql://reader:reader-pw@127.0.0.1:{pg.port}/backend"
        text = failure(dsn, "reader-pw")
    finally:
        pg.execute("DROP ROLE reader")
    assert "reader may not read table vfolders" in text and "GRANT SELECT" in text, text
