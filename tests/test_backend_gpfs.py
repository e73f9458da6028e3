"""The `gpfs` (alias `spectrumscale`) backend through real gateways, against the Storage Scale
management-API emulator (tests/emulators/gpfs.py) over TLS: the quota-scope flow, the exact
requests the backend sends, and the faults (5xx, timeouts, dropped connections, bad
credentials, failed jobs, refused input), each followed by a retry that leaves exactly one
fileset. Enforcement at the limit is the appliance's and cannot be shown on the emulator.
"""

from __future__ import annotations

import base64
import os
import ssl
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for
from emulators import gpfs as emu
from emulators.common import Emulator
from vendor_fixture import sent, vendor_gateway

from backends.gpfs import GPFSBackend, SpectrumScaleBackend
from backends.registry import BACKENDS
from backends.rest import RETRIES

MiB = 2**20
FS_PATH = f"/scalemgmt/v2/filesystems/{emu.FS}"
QUOTAS = f"{FS_PATH}/quotas"
FILESETS = f"{FS_PATH}/filesets"
JOBS = "/scalemgmt/v2/jobs/"
APPLIANCE = "IBM Storage Scale at https://127.0.0.1:"
BAD_PASSWORD = "not-the-password-x9"
AUTH = "Basic " + base64.b64encode(f"{emu.USER}:{emu.PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def gpfs(public_dir: Path) -> Iterator[tuple[Gateway, Emulator]]:
    """One gateway on the emulator for the module, with a 1 s appliance timeout."""
    with vendor_gateway("gpfs", public_dir, "gpfs", {"appliance_timeout": 1}) as pair:
        yield pair


def own_gateway(base: Path, name: str, backend: str = "gpfs",
                options: dict[str, Any] | None = None, trust_ca: bool = True
                ) -> AbstractContextManager[tuple[Gateway, Emulator]]:
    """A gateway of its own on a new emulator, its backend name and CA trust chosen."""
    return vendor_gateway("gpfs", base, name, options, backend=backend, trust_ca=trust_ca)


# -- helpers ----------------------------------------------------------------------------------


def filesets(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in emulator.state()["filesets"]}


def quotas(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return {q["objectName"]: q for q in emulator.state()["quotas"]}


def headers_seen(emulator: Emulator) -> list[dict[str, Any]]:
    with emulator.client() as c:
        return list(c.get("/_emulator/headers").json())


def requests_since(emulator: Emulator, start: int) -> list[dict[str, Any]]:
    return emulator.requests()[start:]


def scope_body(gw: Gateway, qsid: str, limit: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"volume": gw.volume, "qsid": qsid}
    if limit is not None:
        body["options"] = {"limit_bytes": limit}
    return body


def assert_problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert APPLIANCE in body["msg"], body
    for word in words:
        assert word in body["msg"], body
    return body


def assert_serving(gw: Gateway) -> None:
    assert gw.alive()
    assert gw.request("GET", "/").status_code == 200


def make_foreign_fileset(emulator: Emulator, name: str) -> None:
    """A fileset made beside the gateway (unlinked), through the API, its job waited for."""
    with httpx.Client(base_url=emulator.url,
                      verify=ssl.create_default_context(cafile=str(emulator.cafile)),
                      auth=(emu.USER, emu.PASSWORD), timeout=10) as c:
        r = c.post(FILESETS, json={"filesetName": name})
        assert r.status_code == 202, r.text
        job = r.json()["jobs"][0]["jobId"]

        def completed() -> bool:
            status = c.get(f"{JOBS}{job}").json()["jobs"][0]["status"]
            assert status in ("RUNNING", "COMPLETED"), status
            return bool(status == "COMPLETED")

        wait_for(completed, 10, "the foreign fileset's job")


# -- (1) the quota-scope flow -------------------------------------------------------------------


def test_quota_scope_flow(gpfs):
    """Create, describe (the appliance's figures), usage following a write through the
    mount, update, upsert, unset, folder/create with an initial size, delete."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, 10 * MiB))
    assert r.status_code == 204, r.text
    fileset = filesets(emulator)[name]
    assert fileset["path"] == str(gw.source / name)
    assert (gw.source / name).is_dir()
    assert quotas(emulator)[name]["blockHardLimit"] == 10 * 1024  # KiB
    figures = gw.describe(qsid)
    assert figures["limit_bytes"] == 10 * MiB
    assert figures["used_bytes"] <= 4096

    vf = gw.make_vfolder(qsid)
    with open(vf / "data.bin", "wb") as f:
        f.write(b"x" * 100_000)
        os.fsync(f.fileno())
    backing = gw.source / name
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == du_bytes(backing) > 100_000, 20,
             "used_bytes to follow the write (the appliance's figure)")

    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 20 * MiB))
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 20 * MiB
    assert quotas(emulator)[name]["blockHardLimit"] == 20 * 1024

    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] is None
    assert name not in quotas(emulator)  # all limits 0: mmsetquota drops the entry

    upsert = new_qsid("project")
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, upsert, 5 * MiB))
    assert r.status_code == 204, r.text
    assert gw.describe(upsert)["limit_bytes"] == 5 * MiB
    assert quotas(emulator)[scope_hex(upsert)]["blockHardLimit"] == 5 * 1024

    fresh = new_qsid("project")
    vfid = f"{fresh}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create",
                   {"volume": gw.volume, "vfid": vfid,
                    "options": {"initial_max_size_for_quota_scope": 3 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(fresh)["limit_bytes"] == 3 * MiB
    assert quotas(emulator)[scope_hex(fresh)]["blockHardLimit"] == 3 * 1024

    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": fresh})
    assert r.status_code == 409  # it holds the vfolder
    assert scope_hex(fresh) in filesets(emulator)
    r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    for gone in (fresh, upsert):
        r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": gone})
        assert r.status_code == 204, r.text
        assert scope_hex(gone) not in filesets(emulator)
        assert scope_hex(gone) not in quotas(emulator)
        assert not (gw.source / scope_hex(gone)).exists()
        assert gw.request("GET", "/quota-scope",
                          {"volume": gw.volume, "qsid": gone}).status_code == 404


# -- (2) the exact requests ---------------------------------------------------------------------


def test_exact_requests(gpfs):
    """Paths, methods, bodies and auth headers of every operation; every job polled."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    start, hstart = len(emulator.requests()), len(headers_seen(emulator))

    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, 10 * MiB + 1)
                      ).status_code == 204
    log = requests_since(emulator, start)
    assert [(r["method"], r["path"].rsplit("/", 1)[0] + "/") for r in log
            if r["path"].startswith(JOBS)] == [("GET", JOBS)] * 4  # two jobs, 2 polls each
    changes = [r for r in log if r["method"] != "GET"]
    assert [(r["method"], r["path"], r["json"]) for r in changes] == [
        ("POST", FILESETS, {"filesetName": name, "path": str(gw.source / name),
                            "owner": "1000:1000"}),
        ("POST", QUOTAS, {"operationType": "setQuota", "quotaType": "FILESET",
                          "objectName": name, "blockSoftLimit": "10241K",
                          "blockHardLimit": "10241K"}),  # KiB, rounded up
    ]
    assert all(r["query"] == {"fields": ":all:"} for r in log if r["path"].startswith(JOBS))

    start = len(emulator.requests())
    gw.describe(qsid)
    assert [(r["method"], r["path"]) for r in requests_since(emulator, start)] == [
        ("GET", f"{FILESETS}/{name}/quotas")]

    start = len(emulator.requests())
    assert gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 2 * MiB)).status_code == 204
    assert gw.request("DELETE", "/quota-scope/quota",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    assert gw.request("DELETE", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 204
    changes = [r for r in requests_since(emulator, start) if r["method"] != "GET"]
    assert [(r["method"], r["path"], r["json"]) for r in changes] == [
        ("POST", QUOTAS, {"operationType": "setQuota", "quotaType": "FILESET",
                          "objectName": name, "blockSoftLimit": "2048K",
                          "blockHardLimit": "2048K"}),
        ("POST", QUOTAS, {"operationType": "setQuota", "quotaType": "FILESET",
                          "objectName": name, "blockSoftLimit": "0K",
                          "blockHardLimit": "0K"}),
        ("DELETE", f"{FILESETS}/{name}", None),
    ]
    assert name not in filesets(emulator)

    seen = headers_seen(emulator)[hstart:]
    assert seen and all(h["authorization"] == AUTH for h in seen)
    assert all(h["accept"] == "application/json" for h in seen)
    assert all(h["content_type"] == "application/json" for h in seen if h["method"] == "POST")
    # the credentials never reach the log
    text = gw.read_log()
    assert emu.PASSWORD not in text and AUTH.split()[1] not in text


# -- (3) faults -------------------------------------------------------------------------------


def test_5xx_once_is_retried(gpfs):
    """One 503 on a repeatable request (set-quota, a job poll, the delete): retried, done."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    emulator.fault("5xx", 1, "GET", JOBS)
    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB)).status_code == 204
    emulator.fault("5xx", 1, "POST", QUOTAS)
    before = len(sent(emulator, "POST", QUOTAS))
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 2 * MiB))
    assert r.status_code == 204, r.text
    assert len(sent(emulator, "POST", QUOTAS)) == before + 2  # the 503 and the retry
    assert quotas(emulator)[name]["blockHardLimit"] == 2048
    emulator.fault("5xx", 1, "DELETE", f"{FILESETS}/{name}")
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert name not in filesets(emulator)


def test_5xx_past_the_retries_is_502_and_a_retry_succeeds(gpfs):
    """Set-quota failing on every attempt while creating: 502 naming the appliance and its
    message, the fileset made first is removed again, the daemon serves; after the fault a
    retry makes exactly one fileset. A 503 on the (not repeated) create: the same."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    emulator.fault("5xx", 1 + RETRIES, "POST", QUOTAS)
    r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, 4 * MiB))
    assert_problem(r, 502, "HTTP 503", "emulated failure")
    assert name not in filesets(emulator) and name not in quotas(emulator)
    assert not (gw.source / name).exists()
    assert_serving(gw)
    assert gw.request("GET", "/quota-scope", scope_body(gw, qsid)).status_code == 404
    r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, 4 * MiB))
    assert r.status_code == 204, r.text
    assert [f for f in filesets(emulator) if f == name] == [name]
    assert quotas(emulator)[name]["blockHardLimit"] == 4096

    other = new_qsid()
    emulator.fault("5xx", 1, "POST", FILESETS)
    r = gw.request("POST", "/quota-scope", scope_body(gw, other, MiB))
    assert_problem(r, 502, "emulated failure")
    assert scope_hex(other) not in filesets(emulator)
    r = gw.request("POST", "/quota-scope", scope_body(gw, other, MiB))
    assert r.status_code == 204, r.text
    assert scope_hex(other) in filesets(emulator)


def test_timeout(gpfs):
    """No answer within appliance_timeout (1 s): a poll retried succeeds; a set-quota that
    never answers is a 502 saying so, the limit stays, a later update succeeds."""
    gw, emulator = gpfs
    qsid = new_qsid()
    emulator.fault("timeout", 1, "GET", JOBS)
    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB)).status_code == 204
    emulator.fault("timeout", 1 + RETRIES, "POST", QUOTAS)
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 9 * MiB))
    assert_problem(r, 502, "unreachable", "Timeout")
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert quotas(emulator)[scope_hex(qsid)]["blockHardLimit"] == 1024
    assert_serving(gw)
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 9 * MiB))
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 9 * MiB


def test_dropped_connection(gpfs):
    """A connection dropped mid-answer: the delete is repeated and done; the create (not
    repeated) is a 502, leaves nothing, and a retry makes one fileset."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    emulator.fault("drop", 1, "POST", FILESETS)
    r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB))
    assert_problem(r, 502, "unreachable")
    assert name not in filesets(emulator) and not (gw.source / name).exists()
    assert_serving(gw)
    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB)).status_code == 204
    assert [f for f in filesets(emulator) if f == name] == [name]
    emulator.fault("drop", 1, "DELETE", f"{FILESETS}/{name}")
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert name not in filesets(emulator) and not (gw.source / name).exists()


def test_failed_job(gpfs):
    """A job that ends FAILED: its message is the 502's; a failed set-quota leaves the limit,
    a failed create leaves nothing; retries succeed."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    emulator.fault("job_failure", 1, "POST", FILESETS)
    r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB))
    assert_problem(r, 502, "failed", "EFSSG0001C", "emulated job failure")
    assert name not in filesets(emulator) and not (gw.source / name).exists()
    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB)).status_code == 204

    emulator.fault("job_failure", 1, "POST", QUOTAS)
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 6 * MiB))
    assert_problem(r, 502, "emulated job failure")
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert quotas(emulator)[name]["blockHardLimit"] == 1024
    assert_serving(gw)
    assert gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 6 * MiB)).status_code == 204
    assert quotas(emulator)[name]["blockHardLimit"] == 6 * 1024


def test_refused_input_is_4xx(gpfs):
    """The appliance refusing our input is the caller's 4xx: a limit past mmsetquota's
    maximum (400, nothing changes), a fileset of the scope's name made beside the gateway
    (409, that fileset untouched, no directory made)."""
    gw, emulator = gpfs
    qsid = new_qsid()
    name = scope_hex(qsid)
    assert gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB)).status_code == 204
    r = gw.request("PATCH", "/quota-scope", scope_body(gw, qsid, 2**60))
    assert_problem(r, 400, "Invalid value in 'blockSoftLimit'")
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert quotas(emulator)[name]["blockHardLimit"] == 1024

    taken = new_qsid()
    make_foreign_fileset(emulator, scope_hex(taken))
    before = filesets(emulator)[scope_hex(taken)]
    r = gw.request("POST", "/quota-scope", scope_body(gw, taken, MiB))
    assert_problem(r, 409, "EFSSP1102C", "already exists")
    assert filesets(emulator)[scope_hex(taken)] == before
    assert not (gw.source / scope_hex(taken)).exists()
    assert gw.request("GET", "/quota-scope", scope_body(gw, taken)).status_code == 404
    assert_serving(gw)


def test_bad_credentials_are_502(public_dir):
    """A wrong password: the appliance's 401 is the caller's 502 naming it; nothing made, the
    daemon serves."""
    with own_gateway(public_dir, "gpfsbadauth", options={"gpfs_password": BAD_PASSWORD}) as (
            gw, emulator):
        qsid = new_qsid()
        r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB))
        assert_problem(r, 502, "HTTP 401", "Unauthorized")
        assert filesets(emulator) == {}
        assert not (gw.source / scope_hex(qsid)).exists()
        assert_serving(gw)
        assert BAD_PASSWORD not in gw.read_log()


# -- TLS and the alias --------------------------------------------------------------------------


def test_tls_verified_by_default(public_dir):
    """Without the emulator's CA the certificate is refused (502 naming the appliance)."""
    with own_gateway(public_dir, "gpfsnoca", trust_ca=False) as (gw, emulator):
        r = gw.request("POST", "/quota-scope", scope_body(gw, new_qsid(), MiB))
        # the TLS handshake fails (httpx's ConnectError carries no text of its own)
        assert_problem(r, 502, "unreachable (ConnectError")
        assert filesets(emulator) == {}
        assert "TLS verification is off" not in gw.read_log()


def test_verify_ssl_false_connects_without_the_ca(public_dir):
    """`gpfs_verify_ssl = false` (as a storage-proxy file writes it): no CA needed, and the
    log warns that verification is off."""
    with own_gateway(public_dir, "gpfsnoverify", options={"gpfs_verify_ssl": "false"},
                     trust_ca=False) as (gw, emulator):
        assert "TLS verification is off" in gw.read_log()  # at start, before any request
        assert emulator.requests() == []
        qsid = new_qsid()
        r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, MiB))
        assert r.status_code == 204, r.text
        assert scope_hex(qsid) in filesets(emulator)
        assert gw.describe(qsid)["limit_bytes"] == MiB


def test_spectrumscale_alias(public_dir):
    """`backend = "spectrumscale"` is the same backend: a scope made and described on the
    appliance; the volume reports the name its registry entry gives."""
    assert BACKENDS["spectrumscale"] in (GPFSBackend, SpectrumScaleBackend)
    assert issubclass(SpectrumScaleBackend, GPFSBackend)
    assert SpectrumScaleBackend.option_keys == GPFSBackend.option_keys
    with own_gateway(public_dir, "gpfsalias", backend="spectrumscale") as (gw, emulator):
        qsid = new_qsid()
        r = gw.request("POST", "/quota-scope", scope_body(gw, qsid, 2 * MiB))
        assert r.status_code == 204, r.text
        assert quotas(emulator)[scope_hex(qsid)]["blockHardLimit"] == 2048
        assert gw.describe(qsid)["limit_bytes"] == 2 * MiB
        volumes = gw.request("GET", "/volumes").json()["volumes"]
        assert volumes[0]["backend"] == BACKENDS["spectrumscale"].name
