"""`GET /metrics`: Prometheus text format, through prometheus_client's own registry and encoder.

Scope figures are collected at scrape time straight from the ledger (no copies to keep in sync);
control requests are counted and timed as they are answered. Route labels are the known routes
only, so a scanner probing random paths cannot blow up the label set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fusegw.ledger import Ledger

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


class Metrics:
    def __init__(self, ledger: Ledger, volume: str,
                 fuse_requests: Mapping[str, int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("fusegw_requests", "Control socket requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("fusegw_request_seconds", "Control socket request latency",
                                 ["route"], registry=self.registry)
        self.registry.register(_ScopeCollector(ledger, volume))
        if fuse_requests is not None:
            self.registry.register(_FuseCollector(fuse_requests, volume))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
