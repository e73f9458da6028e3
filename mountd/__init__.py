"""mountd: the node supervisor (`fusegw-mountd --config FILE`).

One gateway process per configured volume, kept serving (a dead or hung one is replaced within
seconds and the event kept), and the node's single control endpoint that routes requests to
the gateways by their `volume` field.

| module | its one job |
|---|---|
| `main` | the command line, exit statuses |
| `node` | the supervisors, the endpoint, systemd, SIGHUP and SIGTERM |
| `supervisor` | one volume: start, watch, replace with backoff, its status |
| `gateway` | one gateway process: its command line and own config file, stopping it |
| `health` | the check: a stat of the mount and `GET /` within a deadline |
| `mounts` | the mount table, probes in threads, lazy unmounts of dead mounts |
| `events` | deaths and restarts: kept, and logged as JSON lines |
| `router` | the node endpoint's ASGI app |
| `notify` | sd_notify: READY, STATUS, WATCHDOG, STOPPING |
"""
