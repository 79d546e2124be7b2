"""`smsuper train` in a real container (podman + runc, Debian bookworm), /opt/ml mounted.

The image is what a user builds (COPY the pyz, exec-form ENTRYPOINT) and the
container is started as the platform starts it: `IMAGE train`. First a
framework-style script trains a model (a least-squares fit in plain Python:
the test image carries no scikit-learn); then `podman stop` during a long
second run: the script's SIGTERM handler writes a checkpoint and the
container exits with the script's own code, without podman's SIGKILL.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import containers

pytestmark = [pytest.mark.slow]  # real containers

SUITE = "bookworm"
STOP_TIMEOUT = 30
# Behavioural bound, not a performance one: reaching it means podman's SIGKILL ended the
# container at the timeout instead of the script's own handler.
WELL_UNDER_TIMEOUT = 20

FIT = """
    import argparse, csv, json, os

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAIN"])
    parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
    args = parser.parse_args()

    rows = [[float(v) for v in row] for row in csv.reader(open(os.path.join(args.train, "data.csv")))]
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    with open(os.path.join(args.model_dir, "model.json"), "w") as handle:
        json.dump({"slope": slope, "intercept": my - slope * mx, "epochs": args.epochs,
                   "cpus": int(os.environ["SM_NUM_CPUS"])}, handle)
    print("fitted", n, "rows", flush=True)
"""

LONG_RUN = """
    import os, signal, sys, time

    def checkpoint_and_exit(signum, frame):
        with open(os.path.join(os.environ["SM_CHECKPOINT_DIR"], "state.json"), "w") as handle:
            handle.write('{"epoch": 3}')
        print("checkpoint written", flush=True)
        sys.exit(12)

    signal.signal(signal.SIGTERM, checkpoint_and_exit)
    print("training for a long time", flush=True)
    while True:
        time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def image(images, pyz) -> str:
    return images.image(SUITE, pyz)


def opt_ml(root: Path, script: str, hyperparameters: dict) -> Path:
    (root / "code").mkdir(parents=True)
    (root / "code" / "train.py").write_text(textwrap.dedent(script))
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    data = root / "input" / "data" / "train"
    data.mkdir(parents=True)
    (data / "data.csv").write_text("".join(f"{x},{2 * x + 1}\n" for x in range(20)))
    root.chmod(0o777)
    return root


def test_train_in_a_container_then_stop_a_long_run(image, tmp_path):
    first = opt_ml(tmp_path / "first", FIT, {"epochs": "5", "sagemaker_program": '"train.py"'})
    proc = containers.run(image, ["train"], extra=["-v", f"{first}:/opt/ml"])
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    model = json.loads((first / "model" / "model.json").read_text())
    assert model["slope"] == pytest.approx(2.0) and model["intercept"] == pytest.approx(1.0)
    assert model["epochs"] == 5 and model["cpus"] >= 1
    assert (first / "output" / "success").exists()
    assert "fitted 20 rows" in proc.stdout

    second = opt_ml(tmp_path / "second", LONG_RUN, {"sagemaker_program": '"train.py"'})
    with containers.detached(image, ["train"], extra=["-v", f"{second}:/opt/ml"]) as box:
        box.wait_for_output("training for a long time")
        stop = box.stop(STOP_TIMEOUT)
        logs = box.logs()
        detail = f"stdout: {logs.stdout}\nstderr: {logs.stderr}\npodman stop: {stop.stderr}"
        containers.report(f"{SUITE}: train, podman stop -t {STOP_TIMEOUT}, script checkpoints: {stop.seconds:.2f}s")
        assert box.exit_code() == 12, detail
        assert stop.seconds < WELL_UNDER_TIMEOUT and not stop.podman_escalated, detail
    assert (second / "checkpoints" / "state.json").read_text() == '{"epoch": 3}'
    assert "checkpoint written" in logs.stdout
    assert (second / "output" / "failure").read_text().startswith("train.py exited with code 12.")
