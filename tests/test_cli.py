"""The admin CLI (`fusegw quota ...`, `fusegw vfolder ...`, `fusegw status`), run for real.

Proves, with `python -m fusegw` as a subprocess against a real mounted gateway's real control
socket (DESIGN.md section 5, README "Control socket"):

- every command works in human form (tables and lines with the right values, sizes in binary
  units such as `10G`, `512M`, `1.5T`, `4K`) and with `--json`, and what it changes really
  changed (checked through the API and on the backing volume);
- sizes on input are binary units (`10G` is 10 * 2**30, `1.5T` is 1.5 * 2**40, `4096` plain),
  and an invalid size is a usage error that changes nothing;
- the exit codes tell the outcomes apart: 0 success, 2 usage error, 3 not found, 4 refused
  (also for a caller without rights), 5 gateway unreachable;
- `--help` works everywhere; `quota check` finds changes made beside the gateway and
  `--repair` corrects them; a wrong `--volume` is "not found";
- `fusegw mount -o` (and so an fstab line) reads the shared ledger's options (issue 13), over
  the volume's table in the configuration file.

The socket comes from FUSEGW_SOCKET or `--socket`. Independent invocations run concurrently
to keep the module fast; one gateway serves the module, each test uses fresh IDs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    Gateway,
    du_bytes,
    new_qsid,
    run_as,
    scope_hex,
    start_gateway,
    vfolder_rel,
)

from fusegw.cli import build_parser
from fusegw.cli.mount import settings_from_args
from fusegw.settings import MountSettings, StartupError

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE = range(6)
NO_SOCKET = "/nonexistent-fusegw-dir/none.sock"


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(public_dir: Path) -> Iterator[Gateway]:
    g = start_gateway(public_dir, "cli")
    yield g
    g.stop()


Call = Sequence[str] | tuple[Sequence[str], dict[str, str]]


def _env(socket: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FUSEGW_SOCKET"}
    if socket is not None:
        env["FUSEGW_SOCKET"] = socket
    return env


def cli_many(gw: Gateway | None, calls: list[Call]) -> list[subprocess.CompletedProcess[str]]:
    """Run `fusegw ARGS...` for each call concurrently, FUSEGW_SOCKET set to the gateway's
    socket (a call given as (args, env) adds env on top); results in order."""
    procs = []
    for call in calls:
        args, extra = (call if isinstance(call, tuple) else (call, {}))
        env = _env(str(gw.socket) if gw is not None else None)
        env.update(extra)
        argv = [sys.executable, "-m", "fusegw", *args]
        procs.append((argv, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, env=env)))
    results = []
    for argv, proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


def cli(gw: Gateway | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli_many(gw, [(list(args), env)])[0]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == EXIT_OK, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(proc))


def exits(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the exit code and a one-line reason on stderr; return stderr."""
    assert proc.returncode == code, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.strip(), (proc.args, "no message on stderr")
    return proc.stderr


def table_rows(text: str) -> dict[str, list[str]]:
    """A CLI table as {first column: all columns}, header line skipped."""
    lines = text.strip().splitlines()
    return {line.split()[0]: line.split() for line in lines[1:]}


def human_size(n: int) -> str:
    """The documented size form: bytes below 1 KiB, else one decimal at most, binary units."""
    value, unit = float(n), ""
    for u in "KMGTPE":
        if value < 1024:
            break
        value, unit = value / 1024, u
    return f"{value:.1f}".rstrip("0").rstrip(".") + unit if unit else str(n)


def api(gw: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    return gw.request(method, path, body)


def describe(gw: Gateway, qsid: str) -> httpx.Response:
    return api(gw, "GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid})


def create_vfolder_api(gw: Gateway, qsid: str, fid: str) -> Path:
    r = api(gw, "POST", "/folder/create", {"volume": gw.volume, "vfid": f"{qsid}/{fid}",
                                           "options": None})
    assert r.status_code == 204, r.text
    return gw.mountpoint / vfolder_rel(qsid, fid)


def inodes_below(path: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


# -- --help -------------------------------------------------------------------------------------

HELP_ARGVS = [
    [], ["quota"], ["vfolder"], ["status"], ["mount"],
    *(["quota", a] for a in ("list", "get", "create", "set", "unset", "delete", "check")),
    *(["vfolder", a] for a in ("create", "delete", "usage", "mount")),
]


def test_help_exits_zero_on_every_command() -> None:
    """`--help` on fusegw, every command group, every quota and vfolder subcommand, status and
    mount prints that command's usage on stdout and exits 0 (no gateway needed)."""
    results = cli_many(None, [[*argv, "--help"] for argv in HELP_ARGVS])
    for argv, proc in zip(HELP_ARGVS, results, strict=True):
        out = ok(proc)
        assert out.startswith("usage: " + " ".join(["fusegw", *argv])), (argv, out)
    top = results[0].stdout
    for command in ("mount", "quota", "vfolder", "status"):
        assert command in top
    set_help = results[HELP_ARGVS.index(["quota", "set"])].stdout
    assert "--limit" in set_help and "--json" in set_help and "--socket" in set_help


# -- quota: create, set, list, get ---------------------------------------------------------------


def test_quota_create_set_list_get_human_and_json_with_binary_sizes(gw: Gateway) -> None:
    """`quota create --limit 10G` and `512M --limit-inodes 1000 --json`, `quota set` of missing
    scopes with `1.5T` and plain `4096` create scopes with exactly 10*2**30, 512*2**20,
    1.5*2**40 and 4096 bytes (API); `quota list` shows them as 10G, 512M, 1.5T, 4K with du's
    usage, `quota get` shows one, and both `--json` forms carry the API's figures."""
    q10g, q512m, q15t, q4k = (new_qsid() for _ in range(4))
    created = cli_many(gw, [
        ["quota", "create", q10g, "--limit", "10G"],
        ["quota", "create", q512m, "--limit", "512M", "--limit-inodes", "1000", "--json"],
        ["quota", "set", q15t, "--limit", "1.5T"],
        ["quota", "set", q4k, "--limit", "4096", "--json"],
    ])
    assert ok(created[0]).strip() == f"created {q10g}"
    assert ok_json(created[1]) == {"ok": True}
    assert ok(created[2]).strip() == f"updated {q15t}"
    assert ok_json(created[3]) == {"ok": True}
    expected = {q10g: 10 * GiB, q512m: 512 * MiB, q15t: int(1.5 * TiB), q4k: 4096}
    for qsid, limit in expected.items():
        assert gw.describe(qsid)["limit_bytes"] == limit, qsid
    assert gw.describe(q512m)["limit_inodes"] == 1000
    assert gw.describe(q10g)["limit_inodes"] is None

    listed, listed_json, got, got_json = cli_many(gw, [
        ["quota", "list"], ["quota", "list", "--json"],
        ["quota", "get", q15t], ["quota", "get", q512m, "--json"],
    ])
    rows = table_rows(ok(listed))
    assert ok(listed).splitlines()[0].split()[:3] == ["QUOTA", "SCOPE", "USED"]
    for qsid, text in ((q10g, "10G"), (q512m, "512M"), (q15t, "1.5T"), (q4k, "4K")):
        used = du_bytes(gw.source / scope_hex(qsid))
        assert rows[qsid][1:3] == [human_size(used), text], rows[qsid]
        assert rows[qsid][1] == "4K"  # an empty scope directory: one block
    assert rows[q512m][3:] == ["0", "1000"]
    assert rows[q10g][3:] == ["0", "unlimited"]

    entries = {s["qsid"]: s for s in ok_json(listed_json)}
    for qsid, limit in expected.items():
        assert entries[qsid]["limit_bytes"] == limit
        assert entries[qsid]["used_bytes"] == gw.describe(qsid)["used_bytes"]

    got_rows = table_rows(ok(got))
    assert list(got_rows) == [q15t]
    assert got_rows[q15t][1:] == ["4K", "1.5T", "0", "unlimited"]
    assert ok_json(got_json) == dict(gw.describe(q512m), qsid=q512m)


def test_quota_set_changes_an_existing_scope(gw: Gateway) -> None:
    """`quota set` on an existing scope replaces the given limit and keeps the other one, in
    human (`updated`) and --json form."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB, limit_inodes=50)
    assert ok(cli(gw, "quota", "set", qsid, "--limit", "2G")).strip() == f"updated {qsid}"
    assert gw.describe(qsid)["limit_bytes"] == 2 * GiB
    assert gw.describe(qsid)["limit_inodes"] == 50
    assert ok_json(cli(gw, "quota", "set", qsid, "--limit-inodes", "70", "--json")) == {
        "ok": True}
    assert gw.describe(qsid)["limit_bytes"] == 2 * GiB
    assert gw.describe(qsid)["limit_inodes"] == 70


def test_quota_unset_and_delete_human_and_json(gw: Gateway) -> None:
    """`quota unset` lifts both limits and keeps the scope; `quota delete` removes an empty
    scope and its directory; both say what they did, or print {"ok": true} with --json."""
    u1, u2, d1, d2 = (new_qsid() for _ in range(4))
    for qsid in (u1, u2, d1, d2):
        gw.create_scope(qsid, limit_bytes=MiB, limit_inodes=10)
    results = cli_many(gw, [["quota", "unset", u1], ["quota", "unset", u2, "--json"],
                            ["quota", "delete", d1], ["quota", "delete", d2, "--json"]])
    assert ok(results[0]).strip() == f"unset {u1}"
    assert ok_json(results[1]) == {"ok": True}
    assert ok(results[2]).strip() == f"deleted {d1}"
    assert ok_json(results[3]) == {"ok": True}
    for qsid in (u1, u2):
        got = gw.describe(qsid)
        assert (got["limit_bytes"], got["limit_inodes"]) == (None, None)
    for qsid in (d1, d2):
        assert describe(gw, qsid).status_code == 404
        assert not (gw.source / scope_hex(qsid)).exists()


# -- quota check ---------------------------------------------------------------------------------


def test_quota_check_reports_drift_and_repair_fixes_it(gw: Gateway) -> None:
    """A consistent scope checks `ok` / consistent true; after a file is written straight into
    the backing vfolder directory, `quota check` shows DRIFT with the disk figure of du, --json
    says consistent false; `quota check --repair` (human or --json) exits 0 and says repaired,
    after which the check is consistent and the API's figures equal du."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=GiB)
    fid = uuid.uuid4().hex
    (create_vfolder_api(gw, qsid, fid) / "through").write_bytes(b"t" * 5000)

    human, as_json = cli_many(gw, [["quota", "check", qsid], ["quota", "check", qsid, "--json"]])
    assert table_rows(ok(human))[qsid][1] == "ok"
    report = ok_json(as_json)
    assert len(report) == 1 and report[0]["qsid"] == qsid
    assert report[0]["consistent"] is True

    (gw.source / vfolder_rel(qsid, fid) / "beside").write_bytes(b"b" * 300_000)
    disk = du_bytes(gw.source / scope_hex(qsid))
    human, as_json = cli_many(gw, [["quota", "check", qsid], ["quota", "check", qsid, "--json"]])
    row = table_rows(ok(human))[qsid]
    assert row[1] == "DRIFT"
    assert row[3] == human_size(disk)
    report = ok_json(as_json)[0]
    assert report["consistent"] is False
    assert report["disk"]["used_bytes"] == disk
    assert report["vfolders_drifted"] == [fid]

    repaired = cli(gw, "quota", "check", qsid, "--repair")
    assert table_rows(ok(repaired))[qsid][1] == "repaired"
    after = ok_json(cli(gw, "quota", "check", qsid, "--json"))[0]
    assert after["consistent"] is True
    assert gw.describe(qsid)["used_bytes"] == disk
    assert gw.describe(qsid)["used_inodes"] == inodes_below(gw.source / scope_hex(qsid))

    # once more beside the gateway, repaired with --json this time
    (gw.source / vfolder_rel(qsid, fid) / "beside2").write_bytes(b"c" * 70_000)
    truth = {"used_bytes": du_bytes(gw.source / scope_hex(qsid)),
             "used_inodes": inodes_below(gw.source / scope_hex(qsid))}
    report = ok_json(cli(gw, "quota", "check", qsid, "--repair", "--json"))[0]
    assert (report["consistent"], report["repaired"]) == (False, True)
    assert report["disk"] == report["ledger_after"] == truth
    assert table_rows(ok(cli(gw, "quota", "check", qsid)))[qsid][1] == "ok"
    assert {k: gw.describe(qsid)[k] for k in truth} == truth


# -- vfolder -------------------------------------------------------------------------------------


def test_vfolder_create_usage_mount_delete_human_and_json(gw: Gateway) -> None:
    """`vfolder create --initial-limit 512M` in a missing scope creates the scope with 512 MiB
    and the vfolder on the backing volume; `vfolder mount` prints the path under the mount
    point; `vfolder usage` shows du's bytes (e.g. 52K) and the file count; `vfolder delete`
    removes it; every command also answers --json with the API's figures."""
    qsid = new_qsid("project")
    fa, fb = uuid.uuid4().hex, uuid.uuid4().hex
    va, vb = f"{qsid}/{fa}", f"{qsid}/{fb}"
    assert ok(cli(gw, "vfolder", "create", va, "--initial-limit", "512M")).strip() == (
        f"created {va}")
    assert gw.describe(qsid)["limit_bytes"] == 512 * MiB
    assert ok_json(cli(gw, "vfolder", "create", vb, "--initial-limit", "1G", "--json")) == {
        "ok": True}
    assert gw.describe(qsid)["limit_bytes"] == 512 * MiB  # the scope existed: limit kept
    for fid in (fa, fb):
        assert (gw.source / vfolder_rel(qsid, fid)).is_dir()

    mount_h, mount_j = cli_many(gw, [["vfolder", "mount", va], ["vfolder", "mount", vb,
                                                                  "--json"]])
    path_a = Path(ok(mount_h).strip())
    assert path_a == gw.mountpoint / vfolder_rel(qsid, fa)
    assert ok_json(mount_j) == {"path": str(gw.mountpoint / vfolder_rel(qsid, fb))}

    (path_a / "data").write_bytes(b"d" * 40000)
    (path_a / "sub").mkdir()
    (path_a / "sub" / "more").write_bytes(b"m" * 100)
    used = du_bytes(gw.source / vfolder_rel(qsid, fa))
    usage_h, usage_j = cli_many(gw, [["vfolder", "usage", va], ["vfolder", "usage", va,
                                                                  "--json"]])
    assert ok(usage_h).splitlines()[0].split() == ["VFOLDER", "USED", "FILES"]
    assert table_rows(ok(usage_h))[va] == [va, human_size(used), "3"]
    assert human_size(used) == "52K"  # 4K directory + 40K data + 4K sub + 4K more
    assert ok_json(usage_j) == {"vfid": va, "used_bytes": used, "file_count": 3}

    del_h, del_j = cli_many(gw, [["vfolder", "delete", va], ["vfolder", "delete", vb, "--json"]])
    assert ok(del_h).strip() == f"deleted {va}"
    assert ok_json(del_j) == {"ok": True}
    for fid in (fa, fb):
        assert not (gw.source / vfolder_rel(qsid, fid)).exists()
        r = api(gw, "GET", "/folder/usage", {"volume": gw.volume, "vfid": f"{qsid}/{fid}"})
        assert r.status_code == 404


# -- status ----------------------------------------------------------------------------------------


def test_status_human_and_json(gw: Gateway) -> None:
    """`fusegw status` names the volume, backend, pid, source and mount point; --json is the
    gateway's GET / answer (status ok)."""
    human, as_json = cli_many(gw, [["status"], ["status", "--json"]])
    lines = ok(human).splitlines()
    assert f"volume      {gw.volume} (vfs), pid {gw.pid}" in lines
    assert f"source      {gw.source}" in lines
    assert f"mountpoint  {gw.mountpoint}" in lines
    status = ok_json(as_json)
    assert status["status"] == "ok"
    assert (status["volume"], status["backend"], status["pid"]) == (gw.volume, "vfs", gw.pid)
    assert status["mountpoint"] == str(gw.mountpoint)


def test_socket_flag_wins_over_environment(gw: Gateway) -> None:
    """`--socket PATH` is used even when FUSEGW_SOCKET names a socket that does not exist."""
    proc = cli(gw, "status", "--json", "--socket", str(gw.socket), FUSEGW_SOCKET=NO_SOCKET)
    assert ok_json(proc)["pid"] == gw.pid


# -- sizes on input --------------------------------------------------------------------------------

BAD_SIZES = ["1.5b", "-1G", "abc", "10Q", "1.5", "1e3", "", "10 G B", "8E"]


def test_invalid_sizes_are_usage_errors_and_change_nothing(gw: Gateway) -> None:
    """`--limit` / `--initial-limit` values that are no whole number of bytes in binary units
    (1.5b, -1G, abc, 10Q, ...) exit 2 with a message on stderr and nothing on stdout; the
    existing scope keeps its limit and no scope or vfolder is created."""
    existing = new_qsid()
    gw.create_scope(existing, limit_bytes=MiB)
    missing = new_qsid()
    commands = [lambda v: ["quota", "set", existing, f"--limit={v}"],
                lambda v: ["quota", "create", missing, f"--limit={v}"],
                lambda v: ["vfolder", "create", f"{missing}/{uuid.uuid4().hex}",
                           f"--initial-limit={v}"]]
    # every bad size once, each command with several of them
    calls: list[Call] = [commands[i % 3](bad) for i, bad in enumerate(BAD_SIZES)]
    calls.append(["quota", "set", existing, "--limit", "-1G"])
    for proc in cli_many(gw, calls):
        err = exits(proc, EXIT_USAGE)
        assert proc.stdout == "", proc.args
        assert "limit" in err, (proc.args, err)
    assert gw.describe(existing)["limit_bytes"] == MiB
    assert describe(gw, missing).status_code == 404
    assert not (gw.source / scope_hex(missing)).exists()


# -- exit codes ------------------------------------------------------------------------------------


def test_usage_errors_exit_2(gw: Gateway) -> None:
    """Malformed scope or vfolder IDs (refused by the gateway with 400), unknown subcommands,
    missing arguments and `quota set` without --limit exit 2 with a reason, and create nothing."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    bad_type = f"group:{uuid.uuid4()}"
    results = cli_many(gw, [
        ["quota", "get", "not-a-qsid"],
        ["quota", "get", "user:1234"],
        ["quota", "create", bad_type, "--limit", "1G"],
        ["quota", "set", qsid],
        ["quota", "frobnicate"],
        ["quota", "get"],
        ["quota", "create", new_qsid(), "--limit-inodes", "many"],
        ["vfolder", "usage", "no-slash"],
        ["vfolder", "create", f"{qsid}/xyz"],
        ["status", "--bogus"],
    ])
    for proc in results:
        exits(proc, EXIT_USAGE)
    assert "--limit" in results[3].stderr
    assert describe(gw, bad_type).status_code == 400
    assert not (gw.source / uuid.UUID(bad_type.split(":", 1)[1]).hex).exists()
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert sorted(os.listdir(gw.source / scope_hex(qsid))) == []


def test_not_found_exits_3(gw: Gateway) -> None:
    """get, unset, delete and check of a missing scope, and usage, mount and delete of a
    missing vfolder exit 3 with a reason."""
    missing = new_qsid()
    scope = new_qsid()
    gw.create_scope(scope)
    absent_vf = f"{scope}/{uuid.uuid4().hex}"
    results = cli_many(gw, [
        ["quota", "get", missing], ["quota", "unset", missing], ["quota", "delete", missing],
        ["quota", "check", missing], ["quota", "get", missing, "--json"],
        ["vfolder", "usage", absent_vf], ["vfolder", "mount", absent_vf],
    ])
    for proc in results:
        exits(proc, EXIT_NOT_FOUND)
        assert "404" in proc.stderr
    # delete is idempotent, as the storage proxy's (the manager retries it): gone is done
    (gone,) = cli_many(gw, [["vfolder", "delete", absent_vf]])
    assert gone.returncode == 0, (gone.stdout, gone.stderr)
    assert describe(gw, missing).status_code == 404


def test_wrong_volume_exits_3(gw: Gateway) -> None:
    """`--volume` naming a volume the socket does not serve exits 3 (404 volume not found)."""
    qsid = new_qsid()
    gw.create_scope(qsid)
    results = cli_many(gw, [
        ["quota", "list", "--volume", "nosuchvol"],
        ["quota", "get", qsid, "--volume", "nosuchvol"],
        ["quota", "create", new_qsid(), "--limit", "1G", "--volume", "nosuchvol"],
        ["vfolder", "usage", f"{qsid}/{uuid.uuid4().hex}", "--volume", "nosuchvol"],
    ])
    for proc in results:
        assert "volume" in exits(proc, EXIT_NOT_FOUND).lower()
    assert ok_json(cli(gw, "quota", "get", qsid, "--volume", gw.volume, "--json"))["qsid"] == qsid


def test_refusals_exit_4(gw: Gateway) -> None:
    """Creating an existing scope, deleting a scope that holds a vfolder and creating an
    existing vfolder exit 4 (409) and change nothing."""
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=MiB)
    fid = uuid.uuid4().hex
    create_vfolder_api(gw, qsid, fid)
    results = cli_many(gw, [
        ["quota", "create", qsid, "--limit", "5G"],
        ["quota", "delete", qsid],
        ["vfolder", "create", f"{qsid}/{fid}"],
        ["quota", "create", "project:" + qsid.split(":", 1)[1]],
    ])
    for proc in results:
        assert "409" in exits(proc, EXIT_REFUSED)
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert (gw.source / vfolder_rel(qsid, fid)).is_dir()


def test_caller_without_rights_exits_4(gw: Gateway) -> None:
    """With the socket opened to everyone (0666), uid 65534, neither root nor in the admin
    group, is refused by the gateway (403): the CLI exits 4 and nothing is created."""
    qsid = new_qsid()
    mode = gw.socket.stat().st_mode & 0o7777
    gw.socket.chmod(0o666)
    try:
        base = [sys.executable, "-m", "fusegw"]
        create = run_as(65534, [*base, "quota", "create", qsid, "--limit", "1G",
                                "--socket", str(gw.socket)], env=_env(None))
        listing = run_as(65534, [*base, "quota", "list", "--json"], env=_env(str(gw.socket)))
    finally:
        gw.socket.chmod(mode)
    for proc in (create, listing):
        assert "403" in exits(proc, EXIT_REFUSED)
    assert describe(gw, qsid).status_code == 404


def test_unreachable_gateway_exits_5(gw: Gateway, public_dir: Path) -> None:
    """A socket path that does not exist (by --socket or FUSEGW_SOCKET) and the socket of a
    gateway that has stopped both exit 5 with a reason naming the socket."""
    gone = start_gateway(public_dir, f"gone{uuid.uuid4().hex[:6]}")
    try:
        status = ok_json(cli(None, "status", "--json", "--socket", str(gone.socket)))
        assert status["pid"] == gone.pid
    finally:
        gone.stop()
    results = cli_many(None, [
        ["status", "--socket", NO_SOCKET],
        (["quota", "list"], {"FUSEGW_SOCKET": NO_SOCKET}),
        ["status", "--socket", str(gone.socket)],
        ["quota", "get", new_qsid(), "--socket", str(gone.socket)],
    ])
    for proc, sock in zip(results, [NO_SOCKET, NO_SOCKET, gone.socket, gone.socket],
                          strict=True):
        assert str(sock) in exits(proc, EXIT_UNREACHABLE)


# -- fusegw mount -o: the shared ledger's options ---------------------------------------------


def mount_settings(*argv: str) -> MountSettings:
    """The settings `fusegw mount ARGV...` would start with (parsed, not checked)."""
    settings, _own = settings_from_args(build_parser().parse_args(["mount", *argv]))
    return settings


def test_mount_options_set_the_shared_ledger(tmp_path: Path) -> None:
    """An fstab line's options (mount.fuse3 hands them over as one -o, fstab's own among them)
    set every ledger key; a Sentinel list is written with `;` there, since -o splits on
    commas. Without them, the local ledger and the defaults."""
    src, mnt = str(tmp_path / "vol"), str(tmp_path / "mnt")
    s = mount_settings(src, mnt, "-o", "rw,nosuid,nodev,_netdev,x-systemd.automount,"
                       "ledger=redis,redis_url=redis+sentinel://:pw@s1:26379;s2:26379/fusegw,"
                       "node_id=gpu-07:/mnt/vol,grant_min_bytes=64k,grant_min_inodes=16,"
                       "grant_lease=30,redis_wait=0.5")
    assert (s.ledger, s.redis_url, s.node_id) == (
        "redis", "redis+sentinel://:pw@s1:26379;s2:26379/fusegw", "gpu-07:/mnt/vol")
    assert (s.grant_min_bytes, s.grant_min_inodes, s.grant_lease, s.redis_wait) == (
        64 * KiB, 16, 30.0, 0.5)
    plain = mount_settings(src, mnt)
    assert (plain.ledger, plain.redis_url, plain.node_id) == ("local", None, None)
    assert (plain.grant_min_bytes, plain.grant_min_inodes, plain.grant_lease,
            plain.redis_wait) == (MiB, 64, 10.0, 5.0)


def test_mount_options_win_over_the_volume_table(tmp_path: Path) -> None:
    """-o wins key by key over `[volume.NAME.options]`; what -o leaves out comes from the
    table. These keys are the gateway's, never handed to the backend."""
    (tmp_path / "vol").mkdir()
    config = tmp_path / "node.toml"
    config.write_text('[volume.vol]\npath = "vol"\nmountpoint = "mnt"\n'
                      '[volume.vol.options]\nledger = "redis"\n'
                      'redis_url = "redis://10.0.0.5:6379/3"\ngrant_min_bytes = "2m"\n'
                      'grant_lease = 20\n')
    s = mount_settings("--config", str(config), "--volume", "vol",
                       "-o", "grant_min_bytes=128k,redis_wait=1")
    assert (s.ledger, s.redis_url) == ("redis", "redis://10.0.0.5:6379/3")
    assert (s.grant_min_bytes, s.grant_lease, s.redis_wait) == (128 * KiB, 20.0, 1.0)
    assert s.backend_options == {}


def test_mount_option_mistakes_name_the_option(tmp_path: Path) -> None:
    """A bad value names its -o key; a Sentinel list written with a comma arrives as an
    unknown option, and the refusal says to write `;`."""
    src, mnt = str(tmp_path / "vol"), str(tmp_path / "mnt")
    with pytest.raises(StartupError) as caught:
        mount_settings(src, mnt, "-o", "grant_min_bytes=512,grant_min_inodes=0,node_id=a b")
    assert [p.split(":")[0] for p in str(caught.value).split("; ")] == [
        "-o node_id", "-o grant_min_bytes", "-o grant_min_inodes"]
    with pytest.raises(StartupError) as caught:
        mount_settings(src, mnt, "-o",
                       "ledger=redis,redis_url=redis+sentinel://s1:26379,s2:26379/fusegw")
    assert "unknown mount option s2:26379/fusegw" in str(caught.value)
    assert "separate redis_url's Sentinels with ;" in str(caught.value)
