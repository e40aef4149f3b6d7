"""The shipped Grafana dashboards, and their panel queries with variables filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "compose" / "grafana" / "dashboards"
PROVISIONING = ROOT / "compose" / "grafana" / "provisioning"

#: $name, ${name} and ${name:format}.
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


#: The dashboard of ``topologies/kubernetes.yaml``'s metrics; the others read span metrics.
KUBERNETES_DASHBOARD = "kubernetes"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables_used(expr: str) -> set[str]:
    """Names of the variables an expression refers to."""
    return {a or b for a, b in VARIABLE.findall(expr)}


def panel_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target, with variables replaced from ``variables``."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables[name]

    return [
        (panel["title"], VARIABLE.sub(fill, target["expr"]))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
