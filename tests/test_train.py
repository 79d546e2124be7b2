"""`smsuper train` end to end: the built pyz as PID 1 of a new PID namespace.

Each test lays out a base directory (SAGEMAKER_BASE_DIR) the way the platform
lays out /opt/ml, runs `unshare --pid --fork --mount-proc python PYZ train`,
and checks what a user would: the exit code, output/success or
output/failure, files the script wrote, and the container's stdout/stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import RUN_LIMIT, children_of, read_until, train_command
from helpers import train_environment as environment
from helpers import train_layout as layout

WAIT_LIMIT = 120  # a safety net against a hang, never an assertion about speed


def run_train(pyz: Path, base_env: dict, base: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(pyz), env=environment(base_env, base, **extra), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_LIMIT)


def failure_of(base: Path) -> str:
    return (base / "output" / "failure").read_text(encoding="utf-8")


def detail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout.decode(errors='replace')}\n" \
           f"stderr:\n{proc.stderr.decode(errors='replace')}"


FRAMEWORK_SCRIPT = """
    import argparse, json, os

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--optimizer", type=str, default="sgd")
    parser.add_argument("--use-bias", type=str, default="False")
    parser.add_argument("--model-dir", type=str, default=os.environ["SM_MODEL_DIR"])
    parser.add_argument("--train", type=str, default=os.environ["SM_CHANNEL_TRAIN"])
    args = parser.parse_args()

    rows = open(os.path.join(args.train, "data.csv")).read().split()
    with open(os.path.join(args.model_dir, "model.json"), "w") as handle:
        json.dump({"rows": len(rows), "epochs": args.epochs}, handle)
    report = {
        "args": vars(args),
        "hps": json.loads(os.environ["SM_HPS"]),
        "hp_epochs": os.environ["SM_HP_EPOCHS"],
        "channels": os.environ["SM_CHANNELS"],
        "training_env": json.loads(os.environ["SM_TRAINING_ENV"]),
        "num_cpus": os.environ["SM_NUM_CPUS"],
        "checkpoint_dir": os.environ["SM_CHECKPOINT_DIR"],
        "pythonpath": os.environ.get("PYTHONPATH"),
        "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "report.json"), "w") as handle:
        json.dump(report, handle)
    print("trained on", len(rows), "rows")
"""


def test_framework_style_script_with_json_encoded_hyperparameters(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", FRAMEWORK_SCRIPT, channels={"train": {"data.csv": "1,2\n3,4\n5,6\n"}},
                  hyperparameters={"epochs": "3", "learning-rate": "0.1", "optimizer": '"adam"', "use-bias": "true",
                                   "sagemaker_program": '"train.py"', "sagemaker_region": '"us-west-2"'})
    proc = run_train(pyz, base_env, base)
    assert proc.returncode == 0, detail(proc)
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert json.loads((base / "model" / "model.json").read_text()) == {"rows": 3, "epochs": 3}
    report = json.loads((base / "output" / "data" / "report.json").read_text())
    assert report["args"]["epochs"] == 3 and report["args"]["learning_rate"] == 0.1
    assert report["args"]["optimizer"] == "adam" and report["args"]["use_bias"] == "True"
    assert report["args"]["train"] == str(base / "input" / "data" / "train")
    assert report["hps"] == {"epochs": 3, "learning-rate": 0.1, "optimizer": "adam", "use-bias": True}
    assert report["hp_epochs"] == "3" and report["channels"] == '["train"]'
    assert report["training_env"]["module_name"] == "train"
    assert report["checkpoint_dir"] == str(base / "checkpoints")
    assert report["pythonpath"].split(os.pathsep)[0] == str(base / "code")
    assert report["unbuffered"] == "1" and report["cwd"] == str(base / "code")
    assert report["pid"] != 1  # smsuper is PID 1, the script its child
    assert 1 <= int(report["num_cpus"]) <= (os.cpu_count() or 1)
    assert b"trained on 3 rows" in proc.stdout


def test_generic_estimator_hyperparameters_and_sagemaker_program_setting(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", FRAMEWORK_SCRIPT, channels={"train": {"data.csv": "1\n"}},
                  hyperparameters={"epochs": "2", "optimizer": "adam", "use-bias": "True"})
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 0, detail(proc)
    report = json.loads((base / "output" / "data" / "report.json").read_text())
    assert report["args"]["optimizer"] == "adam" and report["args"]["use_bias"] == "True"
    assert report["hps"] == {"epochs": 2, "optimizer": "adam", "use-bias": "True"}


def test_hostile_values_arrive_as_single_unchanged_arguments(pyz, base_env, tmp_path):
    script = """
        import json, os, sys
        with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "argv.json"), "w") as handle:
            json.dump(sys.argv[1:], handle)
    """
    values = {"a": "two words", "b": "it's \"quoted\"", "c": f"$(touch {tmp_path}/pwned)", "d": f"x; touch {tmp_path}/pwned2"}
    base = layout(tmp_path / "ml", script, hyperparameters=values)
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 0, detail(proc)
    argv = json.loads((base / "output" / "data" / "argv.json").read_text())
    assert argv == ["-a", values["a"], "-b", values["b"], "-c", values["c"], "-d", values["d"]]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


@pytest.mark.slow
def test_exception_gives_its_final_line_first_in_the_failure_file(pyz, base_env, tmp_path):
    script = """
        import sys
        print("epoch 1 of 3")
        print("warming up", file=sys.stderr)
        def fit(rate):
            raise ValueError(f"learning rate must be positive, got {rate}")
        fit(-1)
    """
    base = layout(tmp_path / "ml", script)
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 1, detail(proc)
    text = failure_of(base)
    lines = text.splitlines()
    assert lines[0] == "ValueError: learning rate must be positive, got -1"
    assert lines[1] == "train.py exited with code 1."
    head = text[:1024]
    assert 'raise ValueError(f"learning rate must be positive, got {rate}")' in head
    assert "warming up" in text
    assert not (base / "output" / "success").exists()
    assert b"ValueError: learning rate must be positive" in proc.stderr  # the user's stderr is intact


def test_exit_code_is_kept(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", "import sys\nprint('bad data', file=sys.stderr)\nsys.exit(3)\n")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 3, detail(proc)
    text = failure_of(base)
    assert text.startswith("train.py exited with code 3.")
    assert "bad data" in text[:1024]


def test_death_by_signal_is_128_plus_n(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 137, detail(proc)
    assert "killed by SIGKILL (exit code 137)" in failure_of(base)


def test_missing_program_fails_listing_what_was_looked_for(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml")
    proc = run_train(pyz, base_env, base, PATH="/usr/bin:/bin")
    assert proc.returncode == 127, detail(proc)
    text = failure_of(base)
    assert text.startswith("EntryPointNotFound: no training program found")
    for expected in ("SAGEMAKER_PROGRAM", "sagemaker_program", "`train` on PATH", "/usr/bin"):
        assert expected in text[:1024], text
    assert b"no training program found" in proc.stderr


def test_configured_program_that_does_not_exist(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", "print(1)\n", name="other.py")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 127, detail(proc)
    text = failure_of(base)
    assert str(base / "code" / "train.py") in text and "other.py" in text


def test_bad_json_config_fails_before_anything_runs(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", f"open('{tmp_path}/ran', 'w')\n")
    (base / "input" / "config" / "resourceconfig.json").write_text('{\n  "current_host": "algo-1",\n  "hosts": [algo-1]\n}')
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 2, detail(proc)
    text = failure_of(base)
    assert text.startswith(f"ConfigError: {base}/input/config/resourceconfig.json: line 3, column 13: invalid JSON")
    assert "expected" in text
    assert not (tmp_path / "ran").exists()
    assert b"resourceconfig.json: line 3, column 13" in proc.stderr


@pytest.mark.slow
def test_failed_pip_install_puts_pips_error_in_the_failure_file(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", f"open('{tmp_path}/ran', 'w')\n")
    # --no-index: fails from local information only, no package index is asked
    (base / "code" / "requirements.txt").write_text("--no-index\nsmsuper-test-package-that-does-not-exist==1.0\n")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode != 0, detail(proc)
    text = failure_of(base)
    first = text.splitlines()[0]
    assert first.startswith("InstallError: ERROR:") and "smsuper-test-package-that-does-not-exist" in first, text
    assert "The training program did not run." in text[:1024]
    assert not (tmp_path / "ran").exists()
    assert b"smsuper-test-package-that-does-not-exist" in proc.stderr  # pip's output was streamed


@pytest.mark.slow
def test_satisfied_requirements_then_the_script_runs(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", f"open('{tmp_path}/ran', 'w')\n")
    (base / "code" / "requirements.txt").write_text("--no-index\npip\n")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 0, detail(proc)
    assert (tmp_path / "ran").exists()
    assert b"Requirement already satisfied" in proc.stdout + proc.stderr


def test_a_failure_file_written_by_the_script_is_kept(pyz, base_env, tmp_path):
    script = """
        import os, sys
        with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as handle:
            handle.write("my own reason: the data has no labels")
        raise SystemExit(5)
    """
    base = layout(tmp_path / "ml", script)
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 5, detail(proc)
    assert failure_of(base) == "my own reason: the data has no labels"


def test_shell_entry_point_runs_directly(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", '#!/bin/sh\necho "args: $#: $1 $2"\nexit 4\n', name="run.sh")
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="run.sh")
    assert proc.returncode == 4, detail(proc)
    assert b"args: 0:" in proc.stdout


def test_output_order_whole_lines_and_progress_lines(pyz, base_env, tmp_path):
    script = """
        import sys, time
        for i in range(2000):
            print(f"out {i}")
        sys.stdout.flush()
        sys.stderr.write("half a line, ")
        sys.stderr.flush()
        time.sleep(0.3)
        sys.stderr.write("then the rest\\n")
        for step in (10, 50, 100):
            sys.stderr.write(f"\\r{step:3d}%|" + "#" * (step // 10))
            sys.stderr.flush()
        sys.stderr.write("\\n")
        sys.stdout.write("last line without a newline")
    """
    base = layout(tmp_path / "ml", script)
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 0, detail(proc)
    out_lines = proc.stdout.decode().split("\n")
    assert out_lines[:2000] == [f"out {i}" for i in range(2000)]
    assert "last line without a newline" in proc.stdout.decode()
    err = proc.stderr.decode()
    assert "half a line, then the rest\n" in err
    assert "\r 10%|#\r 50%|#####\r100%|##########\n" in err


def test_sigterm_reaches_the_scripts_handler_which_checkpoints_and_exits_with_its_own_code(pyz, base_env, tmp_path):
    script = """
        import os, signal, sys, time
        def stop(signum, frame):
            with open(os.path.join(os.environ["SM_CHECKPOINT_DIR"], "ckpt.txt"), "w") as handle:
                handle.write("epoch 7")
            print("checkpoint written", flush=True)
            sys.exit(42)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """
    base = layout(tmp_path / "ml", script)
    proc = subprocess.Popen(train_command(pyz), env=environment(base_env, base, SAGEMAKER_PROGRAM="train.py"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc.stdout, b"ready", WAIT_LIMIT)
        init = children_of(proc.pid)  # unshare's child: smsuper, PID 1 inside
        assert len(init) == 1
        os.kill(init[0], signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err.decode(errors="replace")
    assert (base / "checkpoints" / "ckpt.txt").read_text() == "epoch 7"
    assert b"checkpoint written" in out
    assert "train.py exited with code 42." in failure_of(base)


def test_sigterm_before_the_script_starts_fails_the_job_at_once(pyz, base_env, tmp_path):
    # Two hosts that never resolve: the job waits for them, and a stop must end that wait.
    base = layout(tmp_path / "ml", "print(1)\n")
    (base / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1", "smsuper-test-host-that-never-resolves.invalid"]}))
    proc = subprocess.Popen(train_command(pyz), env=environment(base_env, base, SAGEMAKER_PROGRAM="train.py"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc.stderr, b"waiting for host names to resolve", WAIT_LIMIT)
        os.kill(children_of(proc.pid)[0], signal.SIGTERM)
        proc.communicate(timeout=WAIT_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert failure_of(base).startswith("Stopped: received SIGTERM before the training program started")


@pytest.mark.slow
def test_mpi_is_refused(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", "print(1)\n", hyperparameters={"sagemaker_mpi_enabled": "true"})
    proc = run_train(pyz, base_env, base, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 2, detail(proc)
    assert "not supported by smsuper" in failure_of(base)


def test_submit_directory_archive_is_extracted_and_run(pyz, base_env, tmp_path):
    import tarfile

    source = tmp_path / "src"
    source.mkdir()
    (source / "entry.py").write_text("import helper\nhelper.run()\n")
    (source / "helper.py").write_text("def run():\n    print('helper ran')\n")
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("entry.py", "helper.py"):
            tar.add(source / name, arcname=name)
    base = layout(tmp_path / "ml", hyperparameters={"sagemaker_program": '"entry.py"',
                                                    "sagemaker_submit_directory": json.dumps(str(archive))})
    proc = run_train(pyz, base_env, base)
    assert proc.returncode == 0, detail(proc)
    assert b"helper ran" in proc.stdout
