"""A real PostgreSQL server (the Debian package's binaries) on a free port, for the migration's
database tests: a cluster initialised in a temporary directory as the `postgres` OS user (the
server refuses to run as root), a database `backend` with the manager's `vfolders` table,
password (SCRAM) authentication on 127.0.0.1; started per test module, stopped in teardown
whatever happened, its directory removed."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import free_port, wait_for

OS_USER = "postgres"  # the Debian package creates it
SUPERUSER = "postgres"
DATABASE = "backend"

# The manager's vfolders table (ai/backend/manager/models/vfolder.py, 23.09) with the types
# PostgreSQL gives its SQLAlchemy columns; its enum columns (EnumValueType) as text here.
VFOLDERS_DDL = """
CREATE TABLE vfolders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    host varchar(128) NOT NULL,
    domain_name varchar(64) NOT NULL DEFAULT 'default',
    quota_scope_id varchar(64) NOT NULL,
    name varchar(64) NOT NULL,
    usage_mode varchar(32) NOT NULL DEFAULT 'general',
    permission varchar(32) DEFAULT 'rw',
    max_files integer DEFAULT 1000,
    max_size integer,
    num_files integer DEFAULT 0,
    cur_size integer DEFAULT 0,
    created_at timestamptz DEFAULT now(),
    last_used timestamptz,
    creator varchar(128),
    unmanaged_path varchar(512),
    ownership_type varchar(32) NOT NULL DEFAULT 'user',
    "user" uuid,
    "group" uuid,
    cloneable boolean NOT NULL DEFAULT false,
    status varchar(64) NOT NULL DEFAULT 'ready',
    status_history jsonb,
    status_changed timestamptz
);
CREATE INDEX ix_vfolders_host ON vfolders (host);
CREATE INDEX ix_vfolders_status ON vfolders (status);
"""

Row = tuple[uuid.UUID | str, str, str, int | None]
"""(vfolder id, host `proxy:volume`, quota scope ID, max_size in MiB or None)."""


def postgres_bindir() -> Path:
    """/usr/lib/postgresql/<version>/bin of the newest installed version (Debian 12: 15,
    Debian 13: 17)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
    assert found, "PostgreSQL is missing: `make test` installs the Debian package postgresql"
    return found[-1].parent


@dataclass
class PostgresServer:
    port: int
    proc: subprocess.Popen[bytes]
    root: Path
    password: str
    log: Path

    @property
    def dsn(self) -> str:
        return self.dsn_with()

    def dsn_with(self, password: str | None = None, port: int | None = None,
                 dbname: str = DATABASE) -> str:
        """The DSN with one part changed, for the error cases."""
        pw = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{pw}@127.0.0.1:{port or self.port}/{dbname}"

    def connect(self, dbname: str = DATABASE) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn_with(dbname=dbname), autocommit=True)

    def execute(self, statement: str, dbname: str = DATABASE) -> None:
        with self.connect(dbname) as conn:
            conn.execute(statement)  # type: ignore[call-overload]

    def reset(self) -> None:
        """An empty vfolders table."""
        self.execute("TRUNCATE vfolders")

    def insert(self, rows: Iterable[Row]) -> int:
        """Rows into vfolders by COPY (as fast for 50,000 as for 5), with the columns the
        manager would fill derived from the quota scope; the number inserted."""
        n = 0
        with self.connect() as conn, conn.cursor() as cur, cur.copy(
                'COPY vfolders (id, host, quota_scope_id, name, max_size, ownership_type, '
                '"user", "group", creator) FROM STDIN') as copy:
            for fid, host, qsid, max_size in rows:
                kind, _, owner = qsid.partition(":")
                user = owner if kind == "user" else None
                group = owner if kind == "project" else None
                copy.write_row((str(fid), host, qsid, f"vf-{n}", max_size,
                                "user" if user else "group", user, group,
                                "admin@lablup.com"))
                n += 1
        return n


def start_postgres() -> PostgresServer:
    """initdb, then the postmaster on 127.0.0.1:<free port> with its socket in the same
    temporary directory; killed (and the directory removed) if it never answers."""
    bindir = postgres_bindir()
    account = pwd.getpwnam(OS_USER)
    root = Path(tempfile.mkdtemp(prefix="fusegw-postgres-"))  # not under pytest's 0700 tmp
    os.chown(root, account.pw_uid, account.pw_gid)
    as_postgres: dict[str, Any] = {"user": account.pw_uid, "group": account.pw_gid,
                                   "extra_groups": [], "cwd": root}
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, account.pw_uid, account.pw_gid)
    log = root / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER,
                        f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                        "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, **as_postgres)
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port),
                 "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "log_statement=all"],
                stdout=out, stderr=subprocess.STDOUT, **as_postgres)
        server = PostgresServer(port, proc, root, password, log)
        wait_for(lambda: _answers(server, "postgres"), what="postgres answering")
        server.execute(f"CREATE DATABASE {DATABASE}", dbname="postgres")
        server.execute(VFOLDERS_DDL)
    except BaseException:
        _stop(proc, root)
        raise
    return server


def _answers(server: PostgresServer, dbname: str) -> bool:
    try:
        with server.connect(dbname):
            return True
    except psycopg.OperationalError:
        return False


def stop(server: PostgresServer) -> None:
    _stop(server.proc, server.root)


def _stop(proc: subprocess.Popen[bytes] | None, root: Path) -> None:
    """A fast shutdown (SIGINT: clients disconnected, no checkpoint wait), SIGKILL if that
    hangs; then the cluster's directory goes."""
    try:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        stop(server)
