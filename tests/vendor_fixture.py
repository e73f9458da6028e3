"""A gateway on a vendor appliance backend, with the vendor's emulator standing in for the
appliance (tests/emulators/): the emulator serves the management API and treats SOURCE as the
exported volume (what its API creates appears there); the gateway reads the vendor's options
from a configuration file, as a storage-proxy configuration carries them.

Each emulator module defines `gateway_options(url: str) -> dict[str, Any]` (the
`[volume.NAME.options]` that point the backend at it) and `TLS: bool` (served over TLS, with a
certificate the gateway trusts through SSL_CERT_FILE)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w
from conftest import Gateway, free_port, private_source
from emulators.common import Emulator, start_emulator

VENDORS = ("netapp", "dellemc-onefs", "weka", "gpfs")


def emulator_module(vendor: str) -> Any:
    return importlib.import_module(f"emulators.{vendor.replace('-', '_')}")


@contextmanager
def vendor_gateway(vendor: str, base: Path, name: str = "vol",
                   options: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                   backend: str | None = None, trust_ca: bool = True
                   ) -> Iterator[tuple[Gateway, Emulator]]:
    """The emulator and a gateway on it (both stopped at the end, whatever happened).
    `backend`: the name the volume's table gives (an alias of the vendor's); `trust_ca`:
    whether the gateway trusts a TLS emulator's certificate (SSL_CERT_FILE)."""
    source = private_source(base, name)
    module = emulator_module(vendor)
    tls_dir = base / f"{name}-tls" if module.TLS else None
    if tls_dir is not None:
        tls_dir.mkdir()
    emulator = start_emulator(vendor, source, free_port(), tls_dir)
    gw: Gateway | None = None
    try:
        mnt = base / f"{name}.mnt"
        mnt.mkdir()
        config = base / f"{name}.toml"
        table = {"backend": backend or vendor, "path": str(source), "mountpoint": str(mnt),
                 "options": {**module.gateway_options(emulator.url), **(options or {})}}
        config.write_text(tomli_w.dumps({"volume": {name: table}}))
        trust = ({"SSL_CERT_FILE": str(emulator.cafile)} if emulator.cafile and trust_ca
                 else {})
        gw = Gateway(source, mnt, base / f"{name}.sock", base / f"{name}.log", name,
                     ["--config", str(config)], {**trust, **(env or {})})
        gw.start()
        yield gw, emulator
    finally:
        if gw is not None:
            gw.stop()
        emulator.stop()


def sent(emulator: Emulator, method: str, path_part: str) -> list[dict[str, Any]]:
    """The requests the emulator answered with this method and a path containing
    `path_part` (the exact-request tests)."""
    return [r for r in emulator.requests()
            if r["method"] == method and path_part in r["path"]]


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
