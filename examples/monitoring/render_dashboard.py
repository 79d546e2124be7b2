"""Draw smsuper-dashboard.json's panels into one PNG from a live Prometheus.

    python3 render_dashboard.py http://127.0.0.1:9090 out.png [minutes]

Each panel's queries are asked of Prometheus' query_range API over the last
`minutes` (default 5), with the dashboard's variables set to every job and
instance, and drawn with matplotlib (pip install matplotlib): a picture of
what Grafana would show, for a README or a report, without a Grafana.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "smsuper-dashboard.json"
VARIABLES = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m"}


def query_range(base: str, expression: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode({"query": expression, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as answer:
        return json.load(answer)["data"]["result"]


def legend(template: str, labels: dict) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def render(base: str, out: str, minutes: float = 5.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 200)
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 4.2, rows * 2.6), squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        axis.set_title(panel["title"], fontsize=8)
        axis.tick_params(labelsize=6)
        shown = []
        for target in panel["targets"]:
            expression = target["expr"]
            for name, substitute in VARIABLES.items():
                expression = expression.replace(name, substitute)
            for series in query_range(base, expression, start, end, step):
                points = [(float(t) - end, float(v)) for t, v in series["values"] if math.isfinite(float(v))]
                if not points:
                    continue
                label = legend(target.get("legendFormat") or "", series["metric"])[:40]
                if panel["type"] == "stat":
                    by_name = panel["options"].get("textMode") == "name"  # "What /ping says", "Phase"
                    shown.append(label if by_name else f"{label}: {points[-1][1]:.4g}")
                    continue
                axis.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1)
        if panel["type"] == "stat":
            axis.text(0.5, 0.5, "\n".join(shown[:6]), ha="center", va="center", fontsize=7,
                      transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
        elif axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=5, loc="upper left")
            axis.set_xlabel("seconds before now", fontsize=6)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle("smsuper: serving and training (smsuper-dashboard.json's panels)", fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    render(sys.argv[1].rstrip("/"), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 5.0)
