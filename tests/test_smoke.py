"""The gateway mounts, answers on its socket, and unmounts on SIGTERM."""

from conftest import is_mounted, new_qsid


def test_mount_answers_and_unmounts(gateway):
    assert is_mounted(gateway.mountpoint)
    assert (gateway.mountpoint / "version.txt").read_text().strip() == "3"
    assert gateway.request("GET", "/").json()["status"] == "ok"
    gateway.stop()
    assert not is_mounted(gateway.mountpoint)
    assert not gateway.socket.exists()


def test_scope_visible_with_usage(gateway):
    qsid = new_qsid()
    scope_dir = gateway.create_scope(qsid, limit_bytes=10 * 2**20)
    assert scope_dir.is_dir()
    assert gateway.describe(qsid)["limit_bytes"] == 10 * 2**20
