"""mountd: the per-node supervisor of gateways (not built yet; see the issues).

Until it lands, `systemd/fusegw@.service` runs one gateway per volume under systemd.
"""
