"""Started with no job at all (the SDK's v3 ModelTrainer local mode does that).

Inside a training layout (input/config/ under SAGEMAKER_BASE_DIR) smsuper runs
`train` and says so; anywhere else it prints its usage and exits 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_LIMIT = 300  # a safety net against a hang, never an assertion about speed


def run(pyz: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(pyz)], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_LIMIT)


def test_no_command_in_a_training_layout_runs_train(pyz, base_env, tmp_path):
    base = tmp_path / "ml"
    (base / "code").mkdir(parents=True)
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"sagemaker_program": "train.py"}))
    (base / "code" / "train.py").write_text(
        "import os\nopen(os.path.join(os.environ['SM_MODEL_DIR'], 'model.txt'), 'w').write('trained')\n")
    proc = run(pyz, dict(base_env, SAGEMAKER_BASE_DIR=str(base)))
    assert proc.returncode == 0, proc.stderr
    assert (base / "model" / "model.txt").read_text() == "trained"
    assert (base / "output" / "success").exists()
    assert f"no job given and {base / 'input' / 'config'} exists: running train".encode() in proc.stderr, proc.stderr


def test_no_command_elsewhere_prints_usage(pyz, base_env, tmp_path):
    proc = run(pyz, dict(base_env, SAGEMAKER_BASE_DIR=str(tmp_path / "nothing-here")))
    assert proc.returncode == 2
    assert b"usage: python smsuper.pyz train | serve" in proc.stderr
    assert b"no job given" in proc.stderr
    assert not (tmp_path / "nothing-here").exists()
