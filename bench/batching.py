"""Server-side batching: a scikit-learn model, 1-row requests at 64 connections, batching on vs off.

    python3 bench/batching.py            # 3 rounds of 10 s for each stack
    python3 bench/batching.py --quick    # 1 round of 3 s (proves nothing)

A figure module of its own (run.py's figures are left alone). It builds smsuper.pyz from this
checkout, trains each of MODELS (a random forest of 50 trees, a logistic regression) on a 20-feature data set generated at run time (saved
with joblib), and serves it with smsuper's default JSON handlers and a handler module of
model_fn + predict_fn only (predict_proba on the 2-D array it gets), 2 workers, twice in the
same run: batching off (the default), and on (SMSUPER_BATCH_SIZE=BATCH_SIZE,
SMSUPER_BATCH_DELAY_MS=BATCH_DELAY_MS). The load is wrk with 64 connections, each request one
row of 20 floats. The stacks are taken in rounds, order rotated per round.

The interpreter is the one running this script (it needs numpy, scikit-learn and joblib, which
a clean venv would not have): `--python` picks another that has them.

Goals (the issue's): req/s with batching >= 3x without; p99 with batching <= the batch delay plus
twice the p99 without. Prints one table; writes bench/results/batching.json unless --quick.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import stacks  # noqa: E402
from run import standalone_workdir, unpacked_context  # noqa: E402

CONNECTIONS = 64
FEATURES = 20
BATCH_SIZE = 32  # 64 connections over 2 workers: 32 requests wait at each
BATCH_DELAY_MS = 10  # the default

HANDLER = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    return model.predict_proba(data)
"""

MODELS = {
    # a model whose prediction, not the HTTP path, is most of a request: where batching pays
    "random-forest": "from sklearn.ensemble import RandomForestClassifier as Model; options = {'n_estimators': 50}",
    # a model cheaper than the HTTP path: where it does not
    "logistic-regression": "from sklearn.linear_model import LogisticRegression as Model; options = {'max_iter': 1000}",
}

TRAIN = f"""
import sys
import joblib
from sklearn.datasets import make_classification
exec(sys.argv[2])
features, labels = make_classification(n_samples=5000, n_features={FEATURES}, random_state=0)
joblib.dump(Model(random_state=0, **options).fit(features, labels), sys.argv[1])
"""


def model_base(workdir: Path, python: str, model: str) -> Path:
    base = workdir / f"ml-{model}"
    code = base / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(textwrap.dedent(HANDLER))
    subprocess.run([python, "-c", TRAIN, str(base / "model" / "model.joblib"), MODELS[model]], check=True,
                   timeout=300)
    for path in [base, base / "model", code, *code.iterdir(), base / "model" / "model.joblib"]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return base


class SklearnSmsuper(stacks.Smsuper):
    def __init__(self, ctx: stacks.Context, base: Path, name: str, **extra: str):
        super().__init__(ctx, model="trivial", **extra)
        self.base = base
        self.name = name


def mean_batch(metrics_port: int) -> object:
    """Requests per call of the model, from smsuper's own metrics (None with batching off)."""
    text = harness.http_request(metrics_port, "GET", "/metrics", timeout=10)[1].decode()
    found = {}
    for line in text.splitlines():
        for key in ("smsuper_batch_size_sum", "smsuper_batch_size_count"):
            if line.startswith(key + " "):
                found[key] = float(line.split()[1])
    if not found.get("smsuper_batch_size_count"):
        return None
    return round(found["smsuper_batch_size_sum"] / found["smsuper_batch_size_count"], 2)


def figure_for(ctx: stacks.Context, base: Path, model: str, rounds: int, seconds: float) -> Dict:
    body = json.dumps([[0.5] * FEATURES])
    configs = [("batching-off", {}),
               ("batching-on", {"SMSUPER_BATCH_SIZE": str(BATCH_SIZE),
                                "SMSUPER_BATCH_DELAY_MS": str(BATCH_DELAY_MS)})]
    runs: Dict[str, List[Dict]] = {name: [] for name, _ in configs}
    for round_ in range(rounds):
        order = configs[round_ % len(configs):] + configs[:round_ % len(configs)]
        for name, extra in order:
            with SklearnSmsuper(ctx, base, name, **extra) as stack:
                stack.wait_ready()
                harness.wrk(stack.port, "/invocations", CONNECTIONS, 2.0, body)  # warm up
                figure = harness.wrk(stack.port, "/invocations", CONNECTIONS, seconds, body)
                if figure["errors"]:
                    raise harness.BenchError(f"{name}: {figure['errors']} errors {figure['error_detail']}")
                figure["mean_batch"] = mean_batch(stack.metrics_port)
                runs[name].append(figure)
    results: Dict[str, Dict] = {}
    for name, figures in runs.items():
        results[name] = {
            "rps": harness.summary([f["rps"] for f in figures], 0),
            "p50_ms": harness.summary([f["p50_ms"] for f in figures]),
            "p99_ms": harness.summary([f["p99_ms"] for f in figures]),
            "mean_batch": [f["mean_batch"] for f in figures],
            "runs": figures,
        }
    off, on = results["batching-off"], results["batching-on"]
    speedup = on["rps"]["median"] / off["rps"]["median"]
    p99_bar = BATCH_DELAY_MS + 2 * off["p99_ms"]["median"]
    print(f"\n{model}, 1-row JSON requests, {CONNECTIONS} connections, "
          f"{stacks.WORKERS} workers; batching on: SMSUPER_BATCH_SIZE={BATCH_SIZE}, "
          f"SMSUPER_BATCH_DELAY_MS={BATCH_DELAY_MS}")
    print("| stack | req/s median (min-max) | p50 ms | p99 ms | requests per model call |")
    print("|---|---|---|---|---|")
    for name, figure in results.items():
        rate = figure["rps"]
        print(f"| {name} | {rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f}) | "
              f"{figure['p50_ms']['median']:.2f} | {figure['p99_ms']['median']:.2f} | "
              f"{figure['mean_batch'][-1] or 1} |")
    print(f"\nreq/s: {speedup:.2f}x batching off (goal >= 3x: {'met' if speedup >= 3 else 'NOT met'}); "
          f"p99 {on['p99_ms']['median']:.2f} ms (goal <= {p99_bar:.2f} ms: "
          f"{'met' if on['p99_ms']['median'] <= p99_bar else 'NOT met'})")
    results["ratios"] = {"rps": round(speedup, 3), "p99_bar_ms": round(p99_bar, 3), "rounds": rounds,
                         "seconds": seconds, "connections": CONNECTIONS, "batch_size": BATCH_SIZE,
                         "batch_delay_ms": BATCH_DELAY_MS, "load": harness.machine_load()}
    return results


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/batching.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with scikit-learn and joblib")
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 3.0) if args.quick else (3, 10.0)
    with standalone_workdir("smsuper-bench-batch-") as (workdir, pyz):
        ctx = unpacked_context(workdir, pyz, args.python)
        everything: Dict[str, Dict] = {}
        for model in args.models.split(","):
            everything[model] = figure_for(ctx, model_base(workdir, args.python, model), model, rounds, seconds)
        if not args.quick:
            out = harness.HERE / "results" / "batching.json"
            out.write_text(json.dumps(everything, indent=2) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
