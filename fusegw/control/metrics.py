"""`GET /metrics`: Prometheus text format, through prometheus_client's own registry and encoder.

Scope figures are collected at scrape time straight from the ledger (no copies to keep in sync);
control requests are counted and timed as they are answered. Route labels are the known routes
only, so a scanner probing random paths cannot blow up the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fusegw.fs.offload import Offload
from fusegw.ledger import Ledger
from fusegw.ledger.redis_ledger import RedisLedger

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _ScopeCollector(Collector):
    def __init__(self, ledger: Ledger, volume: str) -> None:
        self.ledger = ledger
        self.volume = volume

    def collect(self) -> Iterator[Metric]:
        labels = ["volume", "qsid"]
        gauges = {
            name: GaugeMetricFamily(f"fusegw_scope_{name}", help_, labels=labels)
            for name, help_ in (
                ("used_bytes", "Allocated bytes below the scope directory (du -s -B1)"),
                ("limit_bytes", "Byte limit of the scope (0: unlimited)"),
                ("used_inodes", "Inodes below the scope directory"),
                ("limit_inodes", "Inode limit of the scope (0: unlimited)"),
            )
        }
        refusals = CounterMetricFamily("fusegw_scope_edquot", "Requests refused with EDQUOT",
                                       labels=labels)
        rebuilding = GaugeMetricFamily("fusegw_scope_rebuilding",
                                       "1 while the scope's usage is being rebuilt",
                                       labels=labels)
        for scope in self.ledger.scopes.values():
            values = [self.volume, str(scope.qsid)]
            for name, family in gauges.items():
                family.add_metric(values, getattr(scope, name))
            refusals.add_metric(values, scope.refusals)
            rebuilding.add_metric(values, 1 if scope.rebuilding else 0)
        yield from gauges.values()
        yield refusals
        yield rebuilding


class _FuseCollector(Collector):
    """FUSE requests by operation, read at scrape time from the handlers' own counter."""

    def __init__(self, counts: Mapping[str, int], volume: str) -> None:
        self.counts = counts
        self.volume = volume

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("fusegw_fuse_requests", "FUSE requests answered",
                                     labels=["volume", "op"])
        for op, count in sorted(self.counts.items()):
            family.add_metric([self.volume, op], count)
        yield family


class _SyscallCollector(Collector):
    """Where the handlers' syscalls ran (fusegw/fs/offload.py): a slow disk shows as a rising
    share in worker threads."""

    def __init__(self, offload: Offload, volume: str) -> None:
        self.offload = offload
        self.volume = volume

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("fusegw_syscalls",
                                     "Syscalls of FUSE handlers, inline or in a worker thread",
                                     labels=["volume", "where"])
        family.add_metric([self.volume, "inline"], self.offload.inline_calls)
        family.add_metric([self.volume, "thread"], self.offload.offloaded_calls)
        yield family


class _SharedCollector(Collector):
    """The shared ledger (ledger = "redis"): whether Redis answers, its round trips, the
    commits, and this node's grant per scope."""

    def __init__(self, ledger: RedisLedger, volume: str) -> None:
        self.ledger = ledger
        self.volume = volume

    def collect(self) -> Iterator[Metric]:
        ledger, volume = self.ledger, self.volume
        up = GaugeMetricFamily("fusegw_shared_ledger_up", "1 while Redis answers",
                               labels=["volume"])
        up.add_metric([volume], 0 if ledger.unreachable_since is not None else 1)
        trips = CounterMetricFamily("fusegw_shared_ledger_round_trips",
                                    "Round trips to Redis", labels=["volume"])
        trips.add_metric([volume], ledger.shared.calls)
        commits = CounterMetricFamily("fusegw_shared_ledger_commits",
                                      "Commits of this node's usage", labels=["volume", "result"])
        commits.add_metric([volume, "applied"], ledger.commits - ledger.refused_commits)
        commits.add_metric([volume, "refused"], ledger.refused_commits)
        grants = GaugeMetricFamily("fusegw_shared_grant_bytes",
                                   "Bytes of the scope's room this node holds as its grant",
                                   labels=["volume", "qsid"])
        for pathname, grant in ledger.grants.items():
            scope = ledger.scopes.get(pathname)
            if scope is not None:
                grants.add_metric([volume, str(scope.qsid)], grant.held_bytes)
        yield from (up, trips, commits, grants)


class Metrics:
    def __init__(self, ledger: Ledger, volume: str,
                 fuse_requests: Mapping[str, int] | None = None,
                 offload: Offload | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("fusegw_requests", "Control socket requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("fusegw_request_seconds", "Control socket request latency",
                                 ["route"], registry=self.registry)
        self.registry.register(_ScopeCollector(ledger, volume))
        if fuse_requests is not None:
            self.registry.register(_FuseCollector(fuse_requests, volume))
        if offload is not None:
            self.registry.register(_SyscallCollector(offload, volume))
        if isinstance(ledger, RedisLedger):
            self.registry.register(_SharedCollector(ledger, volume))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


MIN_WINDOW = 1.0
"""Seconds a performance-metric window spans at least: rates over a shorter one are noise."""


@dataclass(frozen=True, slots=True)
class IOSample:
    """The FUSE read/write counters at one moment."""

    at: float
    reads: int
    writes: int
    read_bytes: int
    write_bytes: int
    read_ns: int
    write_ns: int


class PerfSampler:
    """`GET /volume/performance-metric` in the storage proxy's FSPerfMetric shape, from the
    gateway's own FUSE counters: rates between two samples, so no background task is needed.

    It keeps the last two samples; an answer covers the time since the newer one if that is
    at least MIN_WINDOW old (it then becomes the older one), else since the older one. The
    first answer covers the time since the gateway started."""

    def __init__(self, requests: Mapping[str, int], io: Mapping[str, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.requests = requests
        self.io = io
        self.clock = clock
        start = self.sample()
        self.older, self.newer = start, start

    def sample(self) -> IOSample:
        io = self.io
        return IOSample(self.clock(), self.requests.get("read", 0),
                        self.requests.get("write", 0), io["read_bytes"], io["write_bytes"],
                        io["read_ns"], io["write_ns"])

    def metric(self) -> dict[str, Any]:
        now = self.sample()
        if now.at - self.newer.at >= MIN_WINDOW:
            self.older, self.newer = self.newer, now
        base = self.older
        seconds = max(now.at - base.at, 1e-9)
        reads, writes = now.reads - base.reads, now.writes - base.writes
        return {
            "iops_read": round(reads / seconds),
            "iops_write": round(writes / seconds),
            "io_bytes_read": round((now.read_bytes - base.read_bytes) / seconds),
            "io_bytes_write": round((now.write_bytes - base.write_bytes) / seconds),
            "io_usec_read": _usec(now.read_ns - base.read_ns, reads),
            "io_usec_write": _usec(now.write_ns - base.write_ns, writes),
        }


def _usec(ns: int, count: int) -> float:
    """Mean latency of `count` requests that took `ns` in all, in microseconds."""
    return round(ns / count / 1000, 3) if count else 0.0
