"""The usage attributes under `user.fusegw.`, read and written through a real mount.

Proves DESIGN.md section 4: on a scope directory and every path below it the gateway answers
the scope ID and its figures (and, inside a vfolder, the vfolder ID and its figures) as decimal
ASCII, lists them beside the file's own attributes (`getfattr -d`), keeps them current as data
is written, and shows none of them outside a scope. Only `limit_bytes`/`limit_inodes` on a scope
directory can be set, only when the volume enables it, and then only by root in the gateway's
own mount namespace; everything else under `user.fusegw.` is read-only.

Both `os.*xattr` and the real getfattr/setfattr commands are used. The gateways live in a
world-traversable directory so that uid 1000 reaches the scope directory and any refusal it gets
comes from the xattr rules, not from path traversal.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Gateway,
    du_bytes,
    new_qsid,
    run_as,
    scope_hex,
    start_gateway,
)

MiB = 2**20
P = "user.fusegw."
SCOPE_NAMES = [P + n for n in ("scope", "used_bytes", "limit_bytes", "used_inodes",
                               "limit_inodes")]
VFOLDER_NAMES = [P + n for n in ("vfolder", "vfolder.used_bytes", "vfolder.used_inodes")]
DECIMAL = re.compile(rb"^(0|[1-9][0-9]*)$")


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    """A gateway with setfattr limits off (the default)."""
    g = start_gateway(public_dir, "plain")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def xgw(public_dir: Path) -> Iterator[Gateway]:
    """A gateway started with --xattr-limits."""
    g = start_gateway(public_dir, "xlim", ["--xattr-limits"])
    yield g
    g.stop()


class Tree:
    """A scope with a vfolder holding a nested directory and a file with its own xattr."""

    def __init__(self, gw: Gateway, qsid: str, limit_bytes: int | None = 64 * MiB,
                 limit_inodes: int | None = 1000) -> None:
        self.gw = gw
        self.qsid = qsid
        self.scope_dir = gw.create_scope(qsid, limit_bytes, limit_inodes)
        self.fid = uuid.uuid4().hex
        self.vfolder = gw.make_vfolder(qsid, self.fid)
        self.nested = self.vfolder / "a" / "b"
        self.nested.mkdir(parents=True)
        self.file = self.vfolder / "a" / "data.bin"
        self.file.write_bytes(os.urandom(100_000))
        os.setxattr(self.file, "user.own", b"mine")


@pytest.fixture(scope="module")
def tree(gw: Gateway) -> Tree:
    return Tree(gw, new_qsid())


def xattr(path: Path, name: str) -> bytes:
    return os.getxattr(path, name)


def xint(path: Path, name: str) -> int:
    value = os.getxattr(path, name)
    assert DECIMAL.match(value), (name, value)
    return int(value)


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def count_below(path: Path) -> int:
    """Files, directories and symlinks below path (path itself not counted)."""
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


def getfattr_dump(path: Path, *, prefix: list[str] | None = None) -> dict[str, str]:
    proc = subprocess.run([*(prefix or []), "getfattr", "-d", "--absolute-names", "-e", "text",
                           str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        out[name] = value.strip('"')
    return out


def setfattr(path: Path, name: str, value: str, *, prefix: list[str] | None = None,
             uid: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["setfattr", "-n", name, "-v", value, str(path)]
    if uid is not None:
        return run_as(uid, argv)
    return subprocess.run([*(prefix or []), *argv], capture_output=True, text=True, timeout=30)


def state(gw: Gateway, qsid: str) -> tuple[Any, ...]:
    """What a refused setfattr must not change: the API's answer and the xattrs' limits."""
    d = gw.mountpoint / scope_hex(qsid)
    return (gw.describe(qsid), xattr(d, P + "limit_bytes"), xattr(d, P + "limit_inodes"),
            len(audit_lines(gw)))


def audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(line.split(" fusegw.audit ", 1)[1])
            for line in gw.read_log().splitlines() if " fusegw.audit " in line]


# -- reading ------------------------------------------------------------------------------------


def test_scope_dir_answers_scope_id_and_figures(gw: Gateway, tree: Tree) -> None:
    """On the scope dir: user.fusegw.scope is the canonical qsid, and used/limit bytes/inodes
    are decimal ASCII without a newline equal to the API's figures (limits as set)."""
    d = tree.scope_dir
    assert xattr(d, P + "scope") == tree.qsid.encode()
    api = gw.describe(tree.qsid)
    for field in ("used_bytes", "limit_bytes", "used_inodes", "limit_inodes"):
        raw = xattr(d, P + field)
        assert DECIMAL.match(raw), (field, raw)
        assert not raw.endswith(b"\n")
        assert int(raw) == api[field], (field, raw, api)
    assert xint(d, P + "limit_bytes") == 64 * MiB
    assert xint(d, P + "limit_inodes") == 1000


def test_scope_figures_are_du_and_entry_count(gw: Gateway, tree: Tree) -> None:
    """used_bytes equals `du -s -B1` of the scope dir; used_inodes counts the entries below."""
    assert xint(tree.scope_dir, P + "used_bytes") == du_bytes(tree.scope_dir)
    assert xint(tree.scope_dir, P + "used_inodes") == count_below(tree.scope_dir)


def test_unlimited_scope_answers_zero_limits(gw: Gateway) -> None:
    """A scope without limits answers limit_bytes and limit_inodes "0" (the API says null)."""
    qsid = new_qsid("project")
    d = gw.create_scope(qsid)
    assert xattr(d, P + "limit_bytes") == b"0"
    assert xattr(d, P + "limit_inodes") == b"0"
    assert gw.describe(qsid)["limit_bytes"] is None


def test_scope_xattr_is_canonical_qsid(gw: Gateway) -> None:
    """A scope created as `PROJECT:<UUID hex, upper case>` answers user.fusegw.scope in the
    canonical form `project:<hyphenated lower-case uuid>`."""
    u = uuid.uuid4()
    r = gw.request("POST", "/quota-scope", {"volume": gw.volume, "qsid": f"PROJECT:{u.hex.upper()}",
                                            "options": None})
    assert r.status_code == 204, r.text
    assert xattr(gw.mountpoint / u.hex, P + "scope") == f"project:{u}".encode()


@pytest.mark.parametrize("where", ["vfolder-root", "nested-dir", "file"])
def test_paths_in_vfolder_answer_vfolder_id_and_usage(gw: Gateway, tree: Tree,
                                                      where: str) -> None:
    """Inside a vfolder (its root, a nested dir, a file) the scope attributes are answered as on
    the scope dir, plus user.fusegw.vfolder = `<qsid>/<folder hex>` and the vfolder's usage:
    vfolder.used_bytes = `du -s -B1` of the vfolder, vfolder.used_inodes = entries below it."""
    path = {"vfolder-root": tree.vfolder, "nested-dir": tree.nested, "file": tree.file}[where]
    assert xattr(path, P + "scope") == tree.qsid.encode()
    for name in SCOPE_NAMES[1:]:
        assert xattr(path, name) == xattr(tree.scope_dir, name), name
    assert xattr(path, P + "vfolder") == f"{tree.qsid}/{tree.fid}".encode()
    assert xint(path, P + "vfolder.used_bytes") == du_bytes(tree.vfolder)
    assert xint(path, P + "vfolder.used_inodes") == count_below(tree.vfolder)


def test_scope_dir_has_no_vfolder_xattrs(gw: Gateway, tree: Tree) -> None:
    """The scope dir and the fan-out dirs above a vfolder are in no vfolder: the vfolder names
    answer ENODATA there and are not listed."""
    fanout = tree.vfolder.parent
    for path in (tree.scope_dir, fanout, fanout.parent):
        for name in VFOLDER_NAMES:
            assert errno_of(os.getxattr, path, name) == errno.ENODATA, (path, name)
        listed = os.listxattr(path)
        assert not set(VFOLDER_NAMES) & set(listed), listed
        assert set(SCOPE_NAMES) <= set(listed), listed


def test_listxattr_and_getfattr_dump_show_usage_beside_own(gw: Gateway, tree: Tree) -> None:
    """listxattr names the file's own user.own and every user.fusegw.* attribute; `getfattr -d`
    prints them all with their values."""
    listed = os.listxattr(tree.file)
    assert "user.own" in listed
    assert set(SCOPE_NAMES + VFOLDER_NAMES) <= set(listed), listed
    dump = getfattr_dump(tree.file)
    assert dump["user.own"] == "mine"
    for name in SCOPE_NAMES + VFOLDER_NAMES:
        assert dump[name] == xattr(tree.file, name).decode(), (name, dump)
    assert dump[P + "scope"] == tree.qsid
    assert dump[P + "vfolder"] == f"{tree.qsid}/{tree.fid}"
    # the file's own attribute lives on the backing file
    backing = gw.source / tree.file.relative_to(gw.mountpoint)
    assert os.getxattr(backing, "user.own") == b"mine"
    assert not [n for n in os.listxattr(backing) if n.startswith(P)]
    scope_dump = getfattr_dump(tree.scope_dir)
    assert set(SCOPE_NAMES) <= set(scope_dump) and not set(VFOLDER_NAMES) & set(scope_dump)


def test_values_update_after_writes(gw: Gateway) -> None:
    """Writing a file raises used_bytes/used_inodes of the scope and of the vfolder to the new
    du and entry count; removing it brings them back."""
    t = Tree(gw, new_qsid())
    sb, si = xint(t.file, P + "used_bytes"), xint(t.file, P + "used_inodes")
    vb, vi = xint(t.file, P + "vfolder.used_bytes"), xint(t.file, P + "vfolder.used_inodes")
    new = t.nested / "grow.bin"
    with open(new, "wb") as f:
        f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    for path in (t.scope_dir, t.file, new):
        assert xint(path, P + "used_bytes") == du_bytes(t.scope_dir) >= sb + MiB
        assert xint(path, P + "used_inodes") == si + 1
    assert xint(new, P + "vfolder.used_bytes") == du_bytes(t.vfolder) >= vb + MiB
    assert xint(new, P + "vfolder.used_inodes") == vi + 1
    assert gw.describe(t.qsid)["used_bytes"] == xint(t.scope_dir, P + "used_bytes")
    new.unlink()
    assert xint(t.scope_dir, P + "used_bytes") == du_bytes(t.scope_dir)
    assert xint(t.scope_dir, P + "used_inodes") == si
    assert xint(t.file, P + "vfolder.used_inodes") == vi
    assert xint(t.file, P + "vfolder.used_bytes") == du_bytes(t.vfolder)


def test_volume_root_and_version_txt_have_none(gw: Gateway, tree: Tree) -> None:
    """Outside every scope (the volume root, version.txt) the user.fusegw.* names answer
    ENODATA and none is listed."""
    for path in (gw.mountpoint, gw.mountpoint / "version.txt"):
        for name in SCOPE_NAMES + VFOLDER_NAMES:
            assert errno_of(os.getxattr, path, name) == errno.ENODATA, (path, name)
        assert not [n for n in os.listxattr(path) if n.startswith(P)]
        proc = subprocess.run(["getfattr", "-n", P + "scope", str(path)], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode != 0 and "No such attribute" in proc.stderr, proc


def test_unknown_fusegw_name_is_enodata(gw: Gateway, tree: Tree) -> None:
    """A user.fusegw.* name that is not one of ours answers ENODATA, inside a vfolder too."""
    for path in (tree.scope_dir, tree.vfolder, tree.file):
        for name in (P + "nope", P + "vfolder.nope", P + "used_bytesx", P + "scope.x",
                     P + "limit", "user.fusegw"):
            assert errno_of(os.getxattr, path, name) == errno.ENODATA, (path, name)


# -- writing: what is never allowed -------------------------------------------------------------


@pytest.mark.parametrize("name", ["scope", "used_bytes", "used_inodes", "vfolder",
                                  "vfolder.used_bytes", "vfolder.used_inodes", "nope"])
def test_setting_non_limit_fusegw_name_is_eperm(xgw: Gateway, name: str) -> None:
    """Setting any user.fusegw.* other than limit_*, even as root on a gateway that allows
    setfattr limits, fails with EPERM on the scope dir, in a vfolder and on a file, and changes
    no figure."""
    t = Tree(xgw, new_qsid())
    before = [xattr(p, n) for p in (t.scope_dir, t.file) for n in SCOPE_NAMES + VFOLDER_NAMES
              if p is t.file or n in SCOPE_NAMES]
    for path in (t.scope_dir, t.vfolder, t.file):
        assert errno_of(os.setxattr, path, P + name, b"5") == errno.EPERM, path
        proc = setfattr(path, P + name, "5")
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
    after = [xattr(p, n) for p in (t.scope_dir, t.file) for n in SCOPE_NAMES + VFOLDER_NAMES
             if p is t.file or n in SCOPE_NAMES]
    assert after == before


def test_removing_fusegw_names_is_eperm(xgw: Gateway) -> None:
    """Removing any user.fusegw.* name (limits included) fails with EPERM and the limits stay;
    the file's own attribute can still be removed."""
    t = Tree(xgw, new_qsid())
    before = state(xgw, t.qsid)
    for path in (t.scope_dir, t.file):
        for name in [*SCOPE_NAMES, P + "vfolder", P + "nope"]:
            assert errno_of(os.removexattr, path, name) == errno.EPERM, (path, name)
        proc = subprocess.run(["setfattr", "-x", P + "limit_bytes", str(path)],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
    assert state(xgw, t.qsid) == before
    os.removexattr(t.file, "user.own")
    assert "user.own" not in os.listxattr(t.file)


def test_setfattr_limit_is_off_by_default(gw: Gateway) -> None:
    """Without --xattr-limits, root's `setfattr -n user.fusegw.limit_bytes -v 1048576 SCOPE`
    fails with EPERM and the limit stays as it was (also limit_inodes)."""
    qsid = new_qsid()
    d = gw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(gw, qsid)
    proc = setfattr(d, P + "limit_bytes", "1048576")
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
    assert errno_of(os.setxattr, d, P + "limit_inodes", b"10") == errno.EPERM
    assert state(gw, qsid) == before
    assert gw.describe(qsid)["limit_bytes"] == 5 * MiB


# -- writing: limits with --xattr-limits --------------------------------------------------------


def test_root_sets_limits_with_setfattr(xgw: Gateway) -> None:
    """With --xattr-limits, root in the gateway's mount namespace sets limit_bytes and
    limit_inodes on a scope dir with setfattr: the API and the xattrs show the new limits, each
    change is one audit line (via xattr, uid 0, before and after), and 0 lifts a limit."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    n = len(audit_lines(xgw))
    proc = setfattr(d, P + "limit_bytes", "1048576")
    assert proc.returncode == 0, proc.stderr
    proc = setfattr(d, P + "limit_inodes", "77")
    assert proc.returncode == 0, proc.stderr
    api = xgw.describe(qsid)
    assert (api["limit_bytes"], api["limit_inodes"]) == (MiB, 77)
    assert xattr(d, P + "limit_bytes") == b"1048576"
    assert xattr(d, P + "limit_inodes") == b"77"
    lines = audit_lines(xgw)[n:]
    assert len(lines) == 2, lines
    assert lines[0]["via"] == "xattr" and lines[0]["uid"] == 0
    assert lines[0]["qsid"] == qsid
    assert lines[0]["before"] == {"limit_bytes": 5 * MiB, "limit_inodes": 0}
    assert lines[0]["after"] == {"limit_bytes": MiB, "limit_inodes": 0}
    assert lines[1]["after"] == {"limit_bytes": MiB, "limit_inodes": 77}
    assert isinstance(lines[0]["pid"], int) and lines[0]["pid"] not in (0, xgw.pid)
    proc = setfattr(d, P + "limit_bytes", "0")
    assert proc.returncode == 0, proc.stderr
    assert xgw.describe(qsid)["limit_bytes"] is None
    assert xattr(d, P + "limit_bytes") == b"0"


def test_limit_on_non_scope_dir_is_eperm(xgw: Gateway) -> None:
    """setfattr of a limit on a vfolder, a fan-out dir, a nested dir or a file (not the scope
    dir) fails with EPERM and the scope's limits stay."""
    t = Tree(xgw, new_qsid())
    before = state(xgw, t.qsid)
    for path in (t.vfolder, t.vfolder.parent, t.nested, t.file):
        for name in ("limit_bytes", "limit_inodes"):
            proc = setfattr(path, P + name, "5")
            assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, (path,
                                                                                       proc)
    assert state(xgw, t.qsid) == before


def test_non_root_caller_is_refused(xgw: Gateway) -> None:
    """uid 1000 cannot set a limit: with the scope dir's default mode the kernel refuses
    (EACCES); with the dir made 0777 the gateway refuses (EPERM). The limits stay."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(xgw, qsid)
    proc = setfattr(d, P + "limit_bytes", "1", uid=1000)
    assert proc.returncode != 0, proc
    assert ("Permission denied" in proc.stderr or "Operation not permitted" in proc.stderr), proc
    os.chmod(d, 0o777)
    try:
        for name in ("limit_bytes", "limit_inodes"):
            proc = setfattr(d, P + name, "1", uid=1000)
            assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
        # the user can read the figures, so the refusal is the rule, not reachability
        proc = run_as(1000, ["getfattr", "-n", P + "limit_bytes", "--only-values", str(d)])
        assert proc.returncode == 0 and proc.stdout == str(5 * MiB), proc
    finally:
        os.chmod(d, 0o755)
    assert state(xgw, qsid) == before


def test_root_in_other_mount_namespace_is_refused(xgw: Gateway) -> None:
    """Root in another mount namespace (`unshare -m setfattr …`) is refused with EPERM and the
    limits stay, though the same namespace can read the attributes."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(xgw, qsid)
    for name in ("limit_bytes", "limit_inodes"):
        proc = setfattr(d, P + name, "5", prefix=["unshare", "-m"])
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
    assert getfattr_dump(d, prefix=["unshare", "-m"])[P + "scope"] == qsid
    assert state(xgw, qsid) == before


@pytest.mark.parametrize("value", [b"abc", b"-5", b"1.5", b"", b"12abc", b"1e3", b"+7",
                                   b"0x10", b" ", b"\xff"])
def test_non_numeric_limit_is_einval(xgw: Gateway, value: bytes) -> None:
    """A limit that is not a non-negative decimal integer fails with EINVAL; nothing changes."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(xgw, qsid)
    assert errno_of(os.setxattr, d, P + "limit_bytes", value) == errno.EINVAL
    assert errno_of(os.setxattr, d, P + "limit_inodes", value) == errno.EINVAL
    assert state(xgw, qsid) == before


def test_setfattr_command_with_text_value_is_einval(xgw: Gateway) -> None:
    """The real setfattr with a non-numeric value reports "Invalid argument"; nothing changes."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(xgw, qsid)
    proc = setfattr(d, P + "limit_bytes", "ten")
    assert proc.returncode != 0 and "Invalid argument" in proc.stderr, proc
    assert state(xgw, qsid) == before


@pytest.mark.parametrize("field", ["limit_bytes", "limit_inodes"])
def test_limit_beyond_63_bits_is_einval(xgw: Gateway, field: str) -> None:
    """A limit the API would refuse as out of range (2^64) is refused by setfattr too, with
    EINVAL, and nothing changes (the API's range is 0..2^63-1)."""
    qsid = new_qsid()
    d = xgw.create_scope(qsid, limit_bytes=5 * MiB)
    before = state(xgw, qsid)
    proc = setfattr(d, P + field, str(2**64))
    assert proc.returncode != 0 and "Invalid argument" in proc.stderr, proc
    assert state(xgw, qsid) == before
    assert xgw.alive()
