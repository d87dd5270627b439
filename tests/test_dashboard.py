"""The Grafana dashboard only queries metrics (and labels) that the hub process exports.

A renamed metric or a typo in a label leaves a panel silently empty in Grafana; this test
reads every panel's PromQL and checks its names against prometheus_client's registry after
importing calliope_hub.observability.metrics and jupyterhub.metrics, as the hub does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jupyterhub.metrics
import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from calliope_hub.observability import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "calliope-hub.json"
METRIC = re.compile(r"\b((?:calliope|jupyterhub|process)_[a-zA-Z0-9_]+)")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
    "summary": ("_sum", "_count", ""),
}


def exported_series() -> dict[str, str]:
    """Every series name a scrape can show -> its family name (suffixes per metric type)."""
    names = {}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.name
    return names


def label_names() -> dict[str, set[str]]:
    """family name -> its labels ("le" for histograms), from the metric objects themselves."""
    labels: dict[str, set[str]] = {}
    for module in (metrics, jupyterhub.metrics):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                labels[metric._name] = set(metric._labelnames) | ({"le"} if metric._type == "histogram" else set())
    return labels


def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    found = []
    for panel in node.get("panels", []):
        found.append(panel)
        found += panels(panel)
    return found


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def test_the_dashboard_loads_and_has_a_query_for_every_calliope_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Calliope Hub" and dashboard["uid"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queried = {m for _, expr in queries() for m in METRIC.findall(expr)}
    series = exported_series()
    shown = {series[name] for name in queried if name in series}
    defined = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    assert defined - shown == set(), "every calliope_ metric has a panel"
    assert {"jupyterhub_running_servers", "jupyterhub_server_spawn_duration_seconds"} <= shown


@pytest.mark.parametrize(("title", "expr"), queries())
def test_every_query_names_exported_metrics_and_their_labels(title: str, expr: str) -> None:
    series, labels = exported_series(), label_names()
    names = METRIC.findall(expr)
    assert names, f"{title}: {expr!r} names no metric"
    unknown = [name for name in names if name not in series]
    assert unknown == [], f"{title}: not exported: {unknown}"
    families = {series[name] for name in names}
    known_labels = set().union(*(labels.get(f, set()) for f in families))
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            assert label in labels.get(series[name], set()), f"{title}: {name} has no label {label!r}"
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in known_labels, f"{title}: no metric in {expr!r} has the label {label!r}"
