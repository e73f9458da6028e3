"""The Backend.AI manager's own storage-proxy client, in a virtualenv of its own.

`ensure_manager_venv()` makes `.venv-manager` (beside `.venv`) with the manager's interpreter
(Python 3.11: `backend.ai-manager==23.3.7` says `Requires-Python >=3.11,<3.12`) and installs
`backend.ai-manager==23.3.7` into it, never into the gateway's `.venv`: its dependencies
(aiohttp 3.8, SQLAlchemy 1.4, graphene 2, ...) must not mix with ours. A stamp file written
after a successful install makes later runs instant; a missing or different stamp (an
interrupted install, a changed pin) installs again. The install is pinned by CONSTRAINTS, the
set a clean install resolved when this was written, so a dependency's later release cannot
change what the tests run.

`ManagerDriver` runs tests/manager_driver.py in that virtualenv and talks to it, one JSON line a
request (see that file for what each operation calls in the manager's code).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-manager"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".manager-stamp"
DRIVER = Path(__file__).with_name("manager_driver.py")
REQUIREMENT = "backend.ai-manager==23.3.7"
PY_VERSION = (3, 11)
INSTALL_TIMEOUT = 900.0

# What `pip install backend.ai-manager==23.3.7` resolved on Python 3.11 (every one a wheel
# for cp311 or pure Python: nothing needs a compiler).
CONSTRAINTS = """
aioconsole==0.8.2
aiodataloader-ng==0.2.1
aiodns==4.0.4
aiodocker==0.21.0
aiofiles==0.8.0
aiohttp==3.8.6
aiohttp-cors==0.7.0
aiohttp-sse==3.0
aiomonitor-ng==0.7.2
aiosignal==1.4.0
aiotools==1.6.1
alembic==1.8.1
aniso8601==7.0.0
async-timeout==4.0.3
asyncpg==0.32.0
asynctest==0.13.0
asyncudp==0.11.0
attrs==26.1.0
backend.ai-cli==23.3.7
backend.ai-common==23.3.7
backend.ai-manager==23.3.7
backend.ai-plugin==23.3.7
bcrypt==5.0.0
callosum==0.9.10
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
coloredlogs==15.0.1
cryptography==50.0.2
etcetra==0.1.15
frozenlist==1.8.0
graphene==2.1.9
graphql-core==2.3.2
graphql-relay==2.0.1
greenlet==3.5.6
grpcio==1.50.0
grpcio-tools==1.50.0
hiredis==3.5.0
humanfriendly==10.0
idna==3.20
ifaddr==0.2.0
janus==1.0.0
Jinja2==3.1.6
lark-parser==0.11.3
Mako==1.4.3
MarkupSafe==3.0.4
more-itertools==8.13.0
msgpack==1.2.4
multidict==6.9.1
packaging==26.4
passlib==1.7.4
promise==2.3
prompt_toolkit==3.0.53
protobuf==4.21.12
pycares==5.2.1
pycparser==3.12
PyJWT==2.15.1
python-dateutil==4.0.0
python-json-logger==4.2.0
PyYAML==6.0.4
pyzmq==24.0.1
redis==4.5.5
Rx==1.6.3
setproctitle==1.3.8
six==1.17.0
SQLAlchemy==1.4.54
tabulate==0.8.10
tblib==1.7.0
temporenc==0.1.0
tenacity==9.2.1
terminaltables==3.1.10
tomli==2.0.2
trafaret==2.1.1
typeguard==2.13.3
types-aiofiles==25.1.0.20261107
types-cffi==2.1.0.20260827
types-click==7.1.8
types-Jinja2==2.11.9
types-MarkupSafe==1.1.10
types-pyOpenSSL==24.1.0.20240722
types-python-dateutil==2.9.0.20261116
types-PyYAML==6.0.12.20261122
types-redis==4.6.0.20241004
types-setuptools==84.2.0.20261104
types-six==1.17.0.20261008
types-tabulate==0.10.0.20261006
typing_extensions==4.16.0
tzdata==2026.6
uvloop==0.23.0
wcwidth==0.9.4
yarl==1.8.2
"""


class ManagerVenvError(Exception):
    """The manager's virtualenv could not be made; the message says why and what to do."""


def _stamp_text() -> str:
    digest = hashlib.sha256((REQUIREMENT + CONSTRAINTS).encode()).hexdigest()
    return f"{REQUIREMENT} constraints-sha256={digest}"


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def base_python() -> str:
    """A Python 3.11 to make the virtualenv with: the interpreter the gateway's own venv was
    made from, else python3.11 or python3 on PATH."""
    candidates = [str(Path(sys.base_prefix) / "bin" / "python3"),
                  shutil.which("python3.11"), shutil.which("python3")]
    for c in candidates:
        if c and _version_of(c) == PY_VERSION:
            return c
    raise ManagerVenvError(
        f"{REQUIREMENT} needs Python 3.11 (Requires-Python >=3.11,<3.12) and none was found "
        f"(tried {[c for c in candidates if c]}); install python3.11 and python3.11-venv")


def installed() -> bool:
    return PYTHON.exists() and STAMP.exists() and STAMP.read_text().startswith(_stamp_text())


def _run(argv: list[str], log: IO[str], timeout: float) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)


def ensure_manager_venv() -> Path:
    """The manager venv's python, installing it first if missing or incomplete.

    Serialised with a lock (two pytest runs at once install once). The log of an install is
    `.venv-manager/install.log`; the stamp records how long it took."""
    lock_path = Path(tempfile.gettempdir()) / "fusegw-venv-manager.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            return PYTHON
        started = time.monotonic()
        python = base_python()
        # a broken or other-version env: --clear empties it (made here, by this helper)
        broken = VENV.exists() and _version_of(str(PYTHON)) != PY_VERSION
        venv_args = ["--clear"] if broken else []
        venv = subprocess.run([python, "-m", "venv", *venv_args, str(VENV)],
                              capture_output=True, text=True, timeout=300)
        if venv.returncode != 0:
            raise ManagerVenvError(
                f"{python} -m venv {VENV} failed (on Debian: apt-get install python3-venv):\n"
                f"{venv.stdout}{venv.stderr}")
        log_path = VENV / "install.log"
        with open(log_path, "w") as log, tempfile.NamedTemporaryFile(
                "w", prefix="manager-constraints-", suffix=".txt") as constraints:
            constraints.write(CONSTRAINTS)
            constraints.flush()
            try:
                _run([str(PYTHON), "-m", "pip", "install", "--quiet", "--no-input",
                      "-c", constraints.name, REQUIREMENT], log, INSTALL_TIMEOUT)
                _run([str(PYTHON), "-c", "import ai.backend.manager.models.storage"], log, 120)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                log.flush()
                tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
                raise ManagerVenvError(
                    f"installing {REQUIREMENT} into {VENV} failed ({e}); "
                    f"the end of {log_path}:\n{tail}") from None
        seconds = time.monotonic() - started
        STAMP.write_text(f"{_stamp_text()}\ninstalled in {seconds:.1f} s with {python}\n")
        return PYTHON


class DriverError(Exception):
    """A call the manager's code failed; `error` is the driver's description of it."""

    def __init__(self, op: str, error: dict[str, Any]) -> None:
        super().__init__(f"{op}: {error.get('type')}: {error.get('str')} "
                         f"(at {error.get('where')})")
        self.op = op
        self.error = error


class ManagerDriver:
    """tests/manager_driver.py running in the manager's venv, one JSON line a request."""

    def __init__(self, python: Path, log: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.log = log
        self._stderr = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([str(python), "-I", str(DRIVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     cwd="/")
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def reply(self, op: str, **args: Any) -> dict[str, Any]:
        """The driver's raw answer: {"ok": True, "result"} or {"ok": False, "error"}."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        if not self._sel.select(self.timeout):
            raise AssertionError(f"manager driver: no answer to {op} within {self.timeout} s; "
                                 f"its stderr:\n{self.stderr()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"manager driver exited ({self.proc.poll()}) during {op}; "
                                 f"its stderr:\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **args: Any) -> Any:
        """The result of one operation; DriverError if the manager's code raised."""
        answer = self.reply(op, **args)
        if not answer["ok"]:
            raise DriverError(op, answer["error"])
        return answer["result"]

    def error(self, op: str, **args: Any) -> dict[str, Any]:
        """The error of an operation expected to fail (AssertionError if it succeeded)."""
        answer = self.reply(op, **args)
        assert not answer["ok"], f"{op} succeeded: {answer['result']!r}"
        error: dict[str, Any] = answer["error"]
        return error

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text()[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._sel.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def volumes_config(proxies: dict[str, tuple[str, str]], default_host: str,
                   exposed_volume_info: str = "percentage") -> dict[str, Any]:
    """The manager's etcd `volumes` tree as etcd gives it (strings only):
    `proxies: {NAME: (manager_api URL, secret)}`. The gateway has no client API yet
    (issue 11), so client_api names a port nothing listens on; these calls never use it."""
    return {
        "default_host": default_host,
        "exposed_volume_info": exposed_volume_info,
        "proxies": {
            name: {"client_api": "http://127.0.0.1:1", "manager_api": url, "secret": secret,
                   "ssl_verify": "false"}
            for name, (url, secret) in proxies.items()
        },
    }


@contextmanager
def manager_driver(log: Path, volumes: dict[str, Any]) -> Iterator[ManagerDriver]:
    """A configured driver (its manager named "main"), closed at the end."""
    drv = ManagerDriver(ensure_manager_venv(), log)
    try:
        drv.call("configure", volumes=volumes)
        yield drv
    finally:
        drv.close()
