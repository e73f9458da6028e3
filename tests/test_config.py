"""The node's configuration file, validated as one model (issue 10, item 2).

- A fusegw node file is read into `NodeConfig`: paths relative to the file's directory,
  mount points defaulting under `[mountd] mount_root`, the volume's options typed (the
  gateway's own keys) or declared by its backend (`QuotaBackend.option_keys`).
- Every mistake is named at once: file, table, key and what is wrong.
- A storage proxy's `storage-proxy.toml` (tests/data, from Backend.AI 23.03's sample) is
  accepted as it is and mapped: volumes, `[api.manager]` to the node endpoint's TCP listener
  and token, `[api.client]` kept, the proxy's own sections ignored.
- The shared ledger's keys (`ledger`, `redis_url`, `node_id`, `grant_*`, `redis_wait`) are
  typed and checked in the volume's options and in `-o`, and reach mountd's gateway files.
- `fusegw check-config` prints what the node will run, or every problem with exit status 2;
  `fusegw mount --config FILE --volume NAME` reads its volume through the same model.
"""

from __future__ import annotations

import grp
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, is_mounted, private_source

import backends
from backends.registry import BACKENDS
from fusegw import config as cfg

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parent.parent / "etc" / "fusegw.toml.example"
ROOT_GROUP = grp.getgrgid(0).gr_name  # a group that exists everywhere


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_config(path)
    assert str(caught.value).splitlines() == [f"{path}: {p}" for p in caught.value.problems]
    return caught.value.problems


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusegw", "check-config", *args],
                          capture_output=True, text=True, timeout=60)


# -- the model ----------------------------------------------------------------------------------


def test_node_file_read_into_the_model(tmp_path: Path) -> None:
    """Relative paths are the file's directory's (as the storage proxy reads its file), a
    table without mountpoint is mounted under mount_root, options are typed, and a backend's
    declared keys are kept for it."""
    for d in ("vfroot/local", "vfroot/fast"):
        (tmp_path / d).mkdir(parents=True)
    config = write(tmp_path / "fusegw.toml", f"""
[control]
admin_group = "{ROOT_GROUP}"
socket = "run/fusegw.sock"
tcp_listen = "127.0.0.1:6022"
auth_token = "node-secret"

[mountd]
mount_root = "mnt"
health_interval = 1

[volume.local]
path = "vfroot/local"

[volume.local.options]
xattr_limits = true
cache_timeout = 5
read_ahead_kb = 1024
control_socket = "run/local.sock"

[volume.fast]
backend = "xfs"
path = "{tmp_path}/vfroot/fast"
mountpoint = "/srv/fast"
fsprefix = "data"

[volume.fast.options]
projid_file = "/etc/projid"
min_project_id = 2000
""")
    node = cfg.load_config(config)
    assert node.control.admin_group == ROOT_GROUP
    assert node.control.socket == tmp_path / "run/fusegw.sock"
    assert (node.control.tcp_listen, node.control.auth_token) == ("127.0.0.1:6022",
                                                                  "node-secret")
    assert node.mountd.mount_root == tmp_path / "mnt"
    assert node.mountd.health_interval == 1.0
    local, fast = node.volume["local"], node.volume["fast"]
    assert (local.backend, local.path) == ("vfs", tmp_path / "vfroot/local")
    assert node.mountpoint("local") == tmp_path / "mnt/local"
    assert node.control_socket("local") == tmp_path / "run/local.sock"
    assert local.options == {"xattr_limits": True, "cache_timeout": 5.0, "read_ahead_kb": 1024,
                             "control_socket": str(tmp_path / "run/local.sock")}
    assert (fast.backend, fast.fsprefix) == ("xfs", Path("data"))
    assert node.mountpoint("fast") == Path("/srv/fast")
    assert node.control_socket("fast") == Path("/run/fusegw/fast.sock")
    assert fast.options == {"projid_file": "/etc/projid", "min_project_id": 2000}
    # what mountd writes back for a gateway reads the same
    assert cfg.NodeConfig.model_validate(node.model_dump(mode="json", by_alias=True)) == node


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    """One file, one mistake of each kind: each is a line naming the table, the key and
    what is wrong, all in one ConfigError."""
    (tmp_path / "afile").write_text("")
    config = write(tmp_path / "bad.toml", """
colour = "blue"

[control]
admin_group = "fusegw-nobody-has-this-group"
tcp_listen = "6022"
sockets = "/run/x.sock"

[volume.local]
path = "nowhere"

[volume.local.options]
xattr_limits = "yes"
cache_timeout = 0
read_ahead_kb = 4.5
quota_magic = true

[volume.fast]
backend = "xfs"
path = "afile"
fsprefix = "/abs"

[volume.fast.options]
sync_on_describe = true

[volume.vendor]
backend = "kmanila"
path = "/vfroot/manila"

[volume.typo]
backend = "vsf"
path = "/vfroot/x"

[volume.nopath]
backend = "vfs"
""")
    found = problems(config)
    expect = {
        "colour: unknown table or key at the top level": [],
        "[control] admin_group: ": ["'fusegw-nobody-has-this-group' does not exist",
                                    "groupadd fusegw-nobody-has-this-group"],
        "[control] tcp_listen: ": ["'6022'", "HOST:PORT"],
        "[control] sockets: unknown key": [],
        "[volume.local] path: ": [f"{tmp_path}/nowhere does not exist"],
        "[volume.local.options] xattr_limits: ": ["true or false", "'yes'"],
        "[volume.local.options] cache_timeout: ": ["greater than 0", "got 0"],
        "[volume.local.options] read_ahead_kb: ": ["integer", "4.5"],
        "[volume.local.options] quota_magic: unknown option": ["backend vfs reads none",
                                                               "xattr_limits"],
        "[volume.fast] path: ": [f"{tmp_path}/afile is not a directory"],
        "[volume.fast] fsprefix: ": ["/abs", "relative"],
        "[volume.fast.options] sync_on_describe: unknown option": [
            "backend xfs reads lock_file, min_project_id, mountpoint, projects_file"],
        "[volume.vendor] backend: ": ["'kmanila'", "storage proxy's", "not serve it yet",
                                      "btrfs, cephfs, dellemc-onefs, gpfs, netapp, purestorage, "
                                      "spectrumscale, vfs, weka, xfs"],
        "[volume.typo] backend: ": ["unknown backend 'vsf'", "vfs"],
        "[volume.nopath] path: missing": [],
    }
    assert len(found) == len(expect), found
    for start, words in expect.items():
        line = next((p for p in found if p.startswith(start)), None)
        assert line is not None, (start, found)
        assert all(w in line for w in words), (words, line)


def test_mountpoints_must_differ(tmp_path: Path) -> None:
    """Two volumes mounted at one place, also where one's default (mount_root/NAME) is the
    other's explicit mountpoint."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    config = write(tmp_path / "dup.toml", f"""
[mountd]
mount_root = "{tmp_path}/mnt"
[volume.a]
path = "a"
[volume.b]
path = "b"
mountpoint = "mnt/a"
""")
    assert problems(config) == [
        f"volume: [volume.a] and [volume.b] both mount at {tmp_path}/mnt/a (each volume needs "
        "its own mountpoint)"]


def test_node_endpoint_named_twice_must_agree(tmp_path: Path) -> None:
    config = write(tmp_path / "two.toml", """
[control]
tcp_listen = "127.0.0.1:7000"
[api.manager]
service-addr = { host = "127.0.0.1", port = 6022 }
secret = "s"
""")
    (line,) = problems(config)
    assert "[control] tcp_listen 127.0.0.1:7000" in line
    assert "[api.manager] service-addr 127.0.0.1:6022" in line


def test_example_config_names_the_fixes_it_needs(tmp_path: Path) -> None:
    """etc/fusegw.toml.example as shipped, on a node where nothing is set up yet: the admin
    group it names is to be created (`groupadd fusegw-admin`) and the volume's path made."""
    if any(os.path.exists(p) for p in ("/vfroot/local",)):
        pytest.skip("this machine has /vfroot/local")
    try:
        grp.getgrnam("fusegw-admin")
        pytest.skip("this machine has the group fusegw-admin")
    except KeyError:
        pass
    found = problems(EXAMPLE)
    assert len(found) == 2, found
    assert "[control] admin_group" in found[0] and "groupadd fusegw-admin" in found[0]
    assert found[1] == "[volume.local] path: /vfroot/local does not exist"


# -- a storage proxy's file as it is ------------------------------------------------------------


@pytest.fixture
def storage_proxy_toml(tmp_path: Path) -> Path:
    """tests/data/storage-proxy.toml with /vfroot/ under tmp_path, its volumes made."""
    text = (DATA / "storage-proxy.toml").read_text()
    for name in re.findall(r'^path = "/vfroot/([^"]+)"', text, re.M):
        (tmp_path / "vfroot" / name).mkdir(parents=True)
    return write(tmp_path / "storage-proxy.toml",
                 text.replace('"/vfroot/', f'"{tmp_path}/vfroot/'))


def test_storage_proxy_file_accepted_and_mapped(storage_proxy_toml: Path,
                                                tmp_path: Path) -> None:
    node = cfg.load_config(storage_proxy_toml)
    assert {n: v.backend for n, v in node.volume.items()} == {
        "local": "vfs", "fastlocal": "xfs", "mypure": "purestorage", "myceph": "cephfs"}
    assert node.volume["local"].path == tmp_path / "vfroot/vfs"
    assert node.mountpoint("local") == Path("/mnt/fusegw/local")  # no mountpoint: the default
    assert node.control_socket("local") == Path("/run/fusegw/local.sock")
    assert node.volume["myceph"].fsprefix == Path("vfolders")
    assert node.volume["mypure"].options["purity_fs_name"] == "FB-NFS1"  # vendor keys kept
    # [api.manager]: the node endpoint's TCP listener and token
    assert node.control.tcp_listen == "127.0.0.1:6022"
    assert node.control.auth_token == "some-secret-shared-with-manager"
    assert node.api is not None and node.api.manager is not None
    assert node.api.manager.ssl_enabled
    assert node.api.manager.ssl_cert == tmp_path / \
        "configs/storage-proxy/ssl/manager-api-selfsigned.cert.pem"
    # [api.client] and the proxy's JWT secret kept for the client API
    assert node.api.client is not None
    assert node.api.client.service_addr.listen() == "0.0.0.0:6021"
    assert node.storage_proxy is not None
    assert node.storage_proxy.secret == "some-secret-private-for-storage-proxy"
    assert node.storage_proxy.node_id == "i-storage-proxy-01"
    notes = " ".join(node.notes())
    assert "ssl-enabled" in notes and "plain HTTP" in notes and "[api.client]" in notes


def test_storage_proxy_file_with_a_mount_root(storage_proxy_toml: Path,
                                              tmp_path: Path) -> None:
    """The mount root of tables without mountpoint is [mountd] mount_root, added beside the
    storage proxy's sections; and a "HOST:PORT" text address reads as the table form."""
    text = storage_proxy_toml.read_text().replace(
        'service-addr = { host = "127.0.0.1", port = 6022 }', 'service-addr = "10.0.0.5:6022"')
    write(storage_proxy_toml, text + f'\n[mountd]\nmount_root = "{tmp_path}/mnt"\n')
    node = cfg.load_config(storage_proxy_toml)
    assert node.mountpoint("fastlocal") == tmp_path / "mnt/fastlocal"
    assert node.control.tcp_listen == "10.0.0.5:6022"


def test_storage_proxy_sections_are_checked_where_used(storage_proxy_toml: Path) -> None:
    """[api.manager] without its secret, with a bad port or an unknown key is refused; the
    proxy's own sections ([storage-proxy], [etcd], [logging], [debug]) take any key."""
    text = storage_proxy_toml.read_text()
    text = text.replace('secret = "some-secret-shared-with-manager"', "")
    text = text.replace('port = 6021 }', 'port = 99999 }\nssl-enable = true')
    text = text.replace("[debug]\n", "[debug]\nsome-later-key = 1\n")
    found = problems(write(storage_proxy_toml, text))
    assert len(found) == 3, found
    assert "[api.manager] secret: missing (required)" in found
    assert any(p.startswith("[api.client.service-addr] port:") for p in found), found
    assert "[api.client] ssl-enable: unknown key" in found


# -- check-config ---------------------------------------------------------------------------------


def test_check_config_prints_what_the_node_runs(storage_proxy_toml: Path,
                                                tmp_path: Path) -> None:
    proc = check_config("--config", str(storage_proxy_toml))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{storage_proxy_toml}: valid" in out
    for name, backend, path in (("local", "vfs", "vfs"), ("fastlocal", "xfs", "xfs"),
                                ("mypure", "purestorage", "fb1"),
                                ("myceph", "cephfs", "ceph-fuse")):
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert row.split() == [name, backend, f"{tmp_path}/vfroot/{path}",
                               f"/mnt/fusegw/{name}", f"/run/fusegw/{name}.sock"]
    assert "node endpoint  /run/fusegw/fusegw.sock, TCP 127.0.0.1:6022 (token set)" in out
    assert "admin group    none: root only" in out
    assert "secret" not in out.replace("[api.manager]", "")  # no token or password shown
    assert "T-11111111" not in out

    as_json = json.loads(check_config("--config", str(storage_proxy_toml), "--json").stdout)
    assert as_json["ok"] is True
    assert [v["name"] for v in as_json["volumes"]] == ["fastlocal", "local", "myceph",
                                                       "mypure"]
    assert as_json["volumes"][1] == {
        "name": "local", "backend": "vfs", "path": f"{tmp_path}/vfroot/vfs",
        "mountpoint": "/mnt/fusegw/local", "control_socket": "/run/fusegw/local.sock",
        "fsprefix": ".", "options": []}
    assert as_json["node_endpoint"] == {"socket": "/run/fusegw/fusegw.sock",
                                        "tcp_listen": "127.0.0.1:6022",
                                        "auth_token_set": True}
    assert as_json["admin_group"] is None
    assert "T-11111111" not in json.dumps(as_json)


def test_check_config_names_the_admin_group(tmp_path: Path) -> None:
    config = write(tmp_path / "g.toml", f'[control]\nadmin_group = "{ROOT_GROUP}"\n')
    proc = check_config("--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert f"admin group    {ROOT_GROUP} (gid 0)" in proc.stdout


def test_check_config_errors_exit_2(tmp_path: Path) -> None:
    """Every problem on its own stderr line naming the file; exit status 2, also --json."""
    config = write(tmp_path / "bad.toml", '[control]\nadmin_group = "fusegw-nobody-has"\n'
                   '[volume.a]\npath = "nowhere"\n[volume.a.options]\nbogus = 1\n')
    proc = check_config("--config", str(config))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert all(line.startswith(f"fusegw: {config}: ") for line in lines), lines
    assert "groupadd fusegw-nobody-has" in lines[0]
    assert "[volume.a] path" in lines[1] and "[volume.a.options] bogus" in lines[2]

    proc = check_config("--config", str(config), "--json")
    assert proc.returncode == 2
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False and len(answer["errors"]) == 3

    missing = check_config("--config", str(tmp_path / "absent.toml"))
    assert (missing.returncode, missing.stderr) == (
        2, f"fusegw: {tmp_path}/absent.toml: No such file or directory\n")
    broken = check_config("--config", str(write(tmp_path / "broken.toml", "[volume.a\n")))
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"fusegw: {tmp_path}/broken.toml: not valid TOML")


# -- backends declare their options ---------------------------------------------------------------


def test_backends_declare_the_options_they_read() -> None:
    """Each backend's option_keys is exactly what its module reads from its options, so the
    configuration accepts what the backend uses and refuses everything else."""
    read = re.compile(r'(?:self\.options|opts)(?:\.get\(|\[)"(\w+)"|"(\w+)" in opts')
    appliances = {"netapp": "netapp_", "dellemc-onefs": "dell_", "weka": "weka_",
                  "gpfs": "gpfs_", "spectrumscale": "gpfs_", "purestorage": "purity_"}
    for name, cls in BACKENDS.items():
        declared = set(cls.option_keys)
        assert not declared & cfg.GATEWAY_OPTION_KEYS
        if name in appliances:  # the storage proxy's names, some accepted and unused
            prefix = appliances[name]
            assert all(k.startswith(prefix) or k == "appliance_timeout" for k in declared), (
                name, declared)
            continue
        module = Path(sys.modules[cls.__module__].__file__ or "")
        used = {a or b for a, b in read.findall(module.read_text())}
        assert used == declared, (name, used, declared)
    assert isinstance(backends.QuotaBackend.option_keys, frozenset)


def test_mount_options_typed_as_in_the_file() -> None:
    """`-o` values are text; they are read into the same types (`xattr_limits` alone is
    yes), and a bad one names the option."""
    given = {"xattr_limits": "1", "cache_timeout": "2.5", "read_ahead_kb": "512",
             "adopt_nonempty": "yes", "clear_dead": "1"}
    assert cfg.mount_options(given) == {"xattr_limits": True, "cache_timeout": 2.5,
                                        "read_ahead_kb": 512, "adopt_nonempty": True,
                                        "clear_dead": True}
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.mount_options({"read_ahead_kb": "lots", "cache_timeout": "-1"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["cache_timeout",
                                                                "read_ahead_kb"]


# -- the shared ledger's options (issue 13) ------------------------------------------------------

LEDGER_TABLE = """
[volume.shared]
path = "shared"

[volume.shared.options]
ledger = "redis"
redis_url = "redis+sentinel://:pw@s1:26379;s2:26379/fusegw/2"
node_id = "gpu-07.example:/mnt/fusegw/shared"
grant_min_bytes = "64k"
grant_min_inodes = 8
grant_lease = 30
redis_wait = 0
"""


def test_ledger_options_read_from_the_volume_table(tmp_path: Path) -> None:
    """`[volume.NAME.options]` takes the ledger's keys, typed (`grant_min_bytes` as a size),
    with their defaults where unset; mountd's per-gateway file carries them unchanged."""
    from mountd.gateway import VolumeSpec

    (tmp_path / "shared").mkdir()
    node = cfg.load_config(write(tmp_path / "node.toml", LEDGER_TABLE))
    expected = {"ledger": "redis", "redis_url": "redis+sentinel://:pw@s1:26379;s2:26379/fusegw/2",
                "node_id": "gpu-07.example:/mnt/fusegw/shared", "grant_min_bytes": 64 * 2**10,
                "grant_min_inodes": 8, "grant_lease": 30.0, "redis_wait": 0.0}
    assert node.volume["shared"].options == expected
    gateway_file = write(tmp_path / "gateway.toml", VolumeSpec.of(node, "shared").config_text())
    assert cfg.load_config(gateway_file).volume["shared"].options == expected
    defaults = cfg.GatewayOptions()
    assert (defaults.ledger, defaults.redis_url, defaults.node_id) == ("local", None, None)
    assert (defaults.grant_min_bytes, defaults.grant_min_inodes) == (2**20, 64)
    assert (defaults.grant_lease, defaults.redis_wait) == (10.0, 5.0)


def test_ledger_options_refused_naming_the_key(tmp_path: Path) -> None:
    """Each bad value is one problem naming its key; redis_url's value (it may hold a
    password) is not echoed."""
    (tmp_path / "shared").mkdir()
    config = write(tmp_path / "bad.toml", """
[volume.shared]
path = "shared"

[volume.shared.options]
ledger = "etcd"
redis_url = 6379
node_id = "two words"
grant_min_bytes = "1k"
grant_min_inodes = 0
grant_lease = 0.5
redis_wait = -1
""")
    expect = {
        "ledger": ["'local' or 'redis'", "'etcd'"],
        "redis_url": ["must be text"],
        "node_id": ["'two words'", "1 to 200 characters", "A-Z, a-z, 0-9"],
        "grant_min_bytes": ["greater than or equal to 4096"],
        "grant_min_inodes": ["greater than or equal to 1"],
        "grant_lease": ["greater than or equal to 1"],
        "redis_wait": ["greater than or equal to 0"],
    }
    found = problems(config)
    assert len(found) == len(expect), found
    for key, words in expect.items():
        line = next((p for p in found if p.startswith(f"[volume.shared.options] {key}: ")),
                    None)
        assert line is not None, (key, found)
        assert all(w in line for w in words), (words, line)
    assert "6379" not in next(p for p in found if " redis_url: " in p)
    too_long = write(tmp_path / "long.toml", LEDGER_TABLE.replace(
        'node_id = "gpu-07.example:/mnt/fusegw/shared"', f'node_id = "{"n" * 201}"'))
    assert [p.split(":")[0] for p in problems(too_long)] == ["[volume.shared.options] node_id"]


def test_ledger_mount_options_typed_as_in_the_file() -> None:
    """`-o` gives the ledger's keys as text; they are read into the same types, and a bad one
    names the option."""
    given = {"ledger": "redis", "redis_url": "redis://127.0.0.1:6379/1", "node_id": "n1",
             "grant_min_bytes": "1m", "grant_min_inodes": "100", "grant_lease": "2.5",
             "redis_wait": "0"}
    assert cfg.mount_options(given) == {
        "ledger": "redis", "redis_url": "redis://127.0.0.1:6379/1", "node_id": "n1",
        "grant_min_bytes": 2**20, "grant_min_inodes": 100, "grant_lease": 2.5,
        "redis_wait": 0.0}
    assert cfg.mount_options({"grant_min_bytes": "4096"}) == {"grant_min_bytes": 4096}
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.mount_options({"ledger": "1", "grant_min_bytes": "lots", "redis_wait": "soon"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["ledger", "grant_min_bytes",
                                                                "redis_wait"]


# -- fusegw mount --config FILE --volume NAME ---------------------------------------------------


@pytest.fixture
def config_gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    """A node file with volume `cfgvol` (no mountpoint: under [mountd] mount_root) and a
    broken volume beside it; the Gateway that mounting `cfgvol` from it makes."""
    base = tmp_path
    source = private_source(base, "cfgvol")
    (base / "mnt" / "cfgvol").mkdir(parents=True)
    config = write(base / "node.toml", """
[mountd]
mount_root = "mnt"

[volume.cfgvol]
path = "private/cfgvol"

[volume.cfgvol.options]
xattr_limits = true
read_ahead_kb = 2048
control_socket = "cfgvol.sock"

[volume.elsewhere]
path = "storage-not-mounted-yet"
""")
    gw = Gateway(source, base / "mnt" / "cfgvol", base / "cfgvol.sock", base / "cfgvol.log",
                 "cfgvol")
    yield gw, config
    gw.stop()


def test_mount_reads_its_volume_through_the_model(config_gateway: tuple[Gateway, Path]
                                                  ) -> None:
    """No SOURCE, no MOUNTPOINT: the table's path, mount_root/NAME, its socket. Another
    volume's problem (its storage not there yet) does not keep this one from starting,
    though check-config reports it."""
    gw, config = config_gateway
    proc = subprocess.run([sys.executable, "-m", "fusegw", "mount", "--config", str(config),
                           "--volume", "cfgvol", "--log-file", str(gw.log)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + gw.read_log()
    status = gw.request("GET", "/").json()
    gw.pid = status["pid"]
    assert status["mountpoint"] == str(gw.mountpoint)
    assert is_mounted(gw.mountpoint)
    assert check_config("--config", str(config)).returncode == 2


def test_mount_refuses_a_bad_volume_table_in_one_line(config_gateway: tuple[Gateway, Path]
                                                      ) -> None:
    """A mistake in the volume's own table is a one-line refusal naming table and key; before,
    an unknown option went to the backend unread."""
    gw, config = config_gateway
    write(config, config.read_text().replace("read_ahead_kb = 2048",
                                             "read_ahead_kb = 2048\nreadahead = 1"))
    proc = subprocess.run([sys.executable, "-m", "fusegw", "mount", "--config", str(config),
                           "--volume", "cfgvol", "--log-file", str(gw.log)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(config) in lines[0] and "[volume.cfgvol.options] readahead" in lines[0]
    assert not is_mounted(gw.mountpoint)
    assert not (gw.source / "version.txt").exists()
