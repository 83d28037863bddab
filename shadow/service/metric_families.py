"""Prometheus metric families built from plain values, for the store and the process."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def drift_families(gauges: Sequence[tuple[str, dict[str, str], float]]) -> list[Metric]:
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in gauges:
        by_name.setdefault(name, []).append((labels, value))
    families: list[Metric] = []
    for name, samples in sorted(by_name.items()):
        labelnames = sorted(samples[0][0])
        families.append(labelled(
            GaugeMetricFamily, name, "Drift of the current window against the reference.",
            labelnames, (([labels[k] for k in labelnames], v) for labels, v in samples)))
    return families


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
    labels: list[str], samples: Iterable[tuple[list[str], float]],
) -> Metric:
    family = kind(name, documentation, labels=labels)
    for values, value in sorted(samples):
        family.add_metric(values, value)
    return family
