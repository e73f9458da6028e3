"""`make run`: a gateway on a demo volume under ./var, with a small scope and a vfolder to try.

The layout is the one the gateway demands: the volume ./var/backing/volume sits in a root-owned
0700 directory, so no user reaches the backing files beside the quotas; the mount ./var/mnt and
the socket stay where anyone may reach them. Serves until Ctrl-C, then unmounts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BACKING = VAR / "backing"  # 0700: the volume's only way in for users is the mount
SOURCE, MOUNT = BACKING / "volume", VAR / "mnt"
SOCKET, LOG = VAR / "fusegw.sock", VAR / "fusegw.log"
VOLUME = "demo"
QSID = "user:0d7b2a4e-8a51-4d5c-9c1f-7f0a0f0e0c11"
FOLDER = "9f86d081884c7d659a2feaa0c55ad015"
LIMIT = 10 * 2**20


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def api(method: str, path: str, body: dict[str, object]) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(SOCKET))
    with httpx.Client(transport=transport, base_url="http://fusegw") as client:
        return client.request(method, path, content=json.dumps(body))


def start() -> int:
    BACKING.mkdir(mode=0o700, parents=True, exist_ok=True)
    BACKING.chmod(0o700)  # exist_ok keeps whatever mode an older run left
    for d in (SOURCE, MOUNT):
        d.mkdir(exist_ok=True)
    if mounted(MOUNT):  # left over from a run that did not end cleanly
        subprocess.run(["fusermount3", "-u", "-z", str(MOUNT)], check=False)
    fusegw = Path(sys.executable).with_name("fusegw")
    proc = subprocess.run([str(fusegw), "mount", str(SOURCE), str(MOUNT), "--volume", VOLUME,
                           "--control-socket", str(SOCKET), "--log-file", str(LOG)])
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return int(api("GET", "/", {}).json()["pid"])


def prepare() -> Path:
    r = api("POST", "/quota-scope", {"volume": VOLUME, "qsid": QSID,
                                     "options": {"limit_bytes": LIMIT}})
    if r.status_code not in (204, 409):  # 409: the demo volume already has it
        sys.exit(f"creating the demo scope failed: {r.status_code} {r.text}")
    scope_dir = MOUNT / QSID.split(":")[1].replace("-", "")
    vfolder = scope_dir / FOLDER[0:2] / FOLDER[2:4] / FOLDER[4:]
    vfolder.mkdir(parents=True, exist_ok=True)
    return vfolder


def explain(vfolder: Path) -> None:
    rel = os.path.relpath
    print(f"""
fusegw demo: volume {rel(SOURCE)} is mounted at {rel(MOUNT)}
  ({rel(BACKING)} is 0700: users reach the volume only through the mount)
  quota scope {QSID}, limit {LIMIT // 2**20} MiB
  vfolder     {rel(vfolder)}
  log         {rel(LOG)}

Try, in another shell (from {ROOT}):

  # fill the vfolder until the scope's limit refuses the write (EDQUOT)
  dd if=/dev/zero of={rel(vfolder)}/big bs=1M count=64

  # the usage, as anyone can read it
  getfattr -d {rel(vfolder)}

  # the control socket (the storage proxy's API)
  curl -s --unix-socket {rel(SOCKET)} -X GET http://fusegw/quota-scope \\
       -d '{{"volume": "{VOLUME}", "qsid": "{QSID}"}}'
  curl -s --unix-socket {rel(SOCKET)} -X PATCH http://fusegw/quota-scope -w '%{{http_code}}\\n' \\
       -d '{{"volume": "{VOLUME}", "qsid": "{QSID}", "options": {{"limit_bytes": 104857600}}}}'

Ctrl-C stops the gateway and unmounts.
""", flush=True)


def main() -> None:
    pid = start()
    try:
        explain(prepare())
        _wait(pid)
    finally:
        stop(pid)


def _wait(pid: int) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    while os.path.exists(f"/proc/{pid}"):
        if signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 1.0) is not None:
            return


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while mounted(MOUNT) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("fusegw demo: unmounted" if not mounted(MOUNT) else "fusegw demo: still mounted!")


if __name__ == "__main__":
    main()
