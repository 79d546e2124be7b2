"""The training contract as pure functions, tested from the source tree.

Configs (valid, invalid with file and position), hyperparameters in both
encodings, SM_* names and values as the toolkit writes them, argv building
that never re-parses a value, entry point resolution, the failure reason's
1024-character budget, and CPU/GPU counting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper.sagemaker import configs, encoding, hyperparameters, resources  # noqa: E402
from smsuper.sagemaker.environment import EntryPointFacts, TrainingEnvironment  # noqa: E402
from smsuper.sagemaker.paths import Paths  # noqa: E402
from smsuper.train import distributed, entrypoint, failure, hostwait, launch, outcome, requirements, sourcedir  # noqa: E402


def write_config(base: Path, name: str, text: str) -> Path:
    path = base / "input" / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def training_env(base: Path, hps: dict = None, channels: dict = None, resources_config: dict = None,
                 program: str = "train.py", cpus: int = 2, gpus: int = 0) -> TrainingEnvironment:
    paths = Paths(str(base))
    config = configs.TrainingConfig(hyperparameters=hps or {}, input_data=channels or {},
                                    resources=resources_config or configs.default_resource_config(),
                                    checkpoint=None)
    return TrainingEnvironment(
        paths=paths, config=config, hyperparameters=hyperparameters.load(config.hyperparameters),
        entry_point=EntryPointFacts(user_entry_point=program, module_dir=paths.code_dir),
        log_level=20, num_cpus=cpus, num_gpus=gpus, checkpoint_dir=paths.default_checkpoint_dir)


# ---- config files ------------------------------------------------------------------

def test_absent_configs_give_a_single_local_host(tmp_path):
    config = configs.load(Paths(str(tmp_path)))
    assert config.hyperparameters == {} and config.input_data == {} and config.checkpoint is None
    assert config.resources["hosts"] == ["algo-1"] and config.resources["current_host"] == "algo-1"
    assert configs.checkpoint_dir(config, Paths(str(tmp_path))) == str(tmp_path / "checkpoints")


def test_valid_configs_load_as_written(tmp_path):
    write_config(tmp_path, "hyperparameters.json", '{"epochs": "10"}')
    write_config(tmp_path, "inputdataconfig.json", '{"train": {"ContentType": "text/csv", "TrainingInputMode": "File"}}')
    resource = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "current_instance_type": "ml.m5.xlarge",
                "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.xlarge",
                                     "hosts": ["algo-1", "algo-2"]}]}
    write_config(tmp_path, "resourceconfig.json", json.dumps(resource))
    write_config(tmp_path, "checkpointconfig.json", '{"LocalPath": "/ckpt", "S3Uri": "s3://b/k"}')
    config = configs.load(Paths(str(tmp_path)))
    assert config.hyperparameters == {"epochs": "10"}
    assert config.resources == resource
    assert configs.checkpoint_dir(config, Paths(str(tmp_path))) == "/ckpt"


@pytest.mark.parametrize("name, text, line, column, expected", [
    ("hyperparameters.json", '{\n  "epochs": "10",\n  "lr": 0.1,,\n}', 3, 13, "hyperparameter names"),
    ("hyperparameters.json", '["epochs"]', 1, 1, "found a list"),
    ("hyperparameters.json", "", 1, 1, "empty"),
    ("inputdataconfig.json", '{\n "train": "File"\n}', 2, 11, 'channel "train"'),
    ("inputdataconfig.json", '{"train": {"TrainingInputMode": 3}}', 1, 33, "TrainingInputMode"),
    ("resourceconfig.json", '{\n "current_host": "algo-1",\n "hosts": ["algo-1",\n   7]\n}', 4, 4, "each entry"),
    ("resourceconfig.json", '{"hosts": ["algo-1"]}', 1, 1, 'missing key "current_host"'),
    ("resourceconfig.json", '{"current_host": "algo-3", "hosts": ["algo-1"]}', 1, 18, "not one of"),
    ("resourceconfig.json", '{"current_host": "a", "hosts": ["a"], "instance_groups": [{"hosts": ["a"]}]}', 1, 59,
     "instance_group_name"),
    ("checkpointconfig.json", '{"LocalPath": "relative/dir"}', 1, 15, "absolute path"),
])
def test_invalid_configs_name_the_file_the_position_and_what_was_expected(tmp_path, name, text, line, column, expected):
    path = write_config(tmp_path, name, text)
    with pytest.raises(configs.ConfigError) as raised:
        configs.load(Paths(str(tmp_path)))
    message = str(raised.value)
    assert message.startswith(f"{path}: line {line}, column {column}: "), message
    assert expected in message


def test_config_that_is_not_utf8_is_located(tmp_path):
    path = tmp_path / "input" / "config" / "hyperparameters.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(configs.ConfigError, match=r"line 2, column 3: not valid UTF-8"):
        configs.load(Paths(str(tmp_path)))


# ---- hyperparameters ---------------------------------------------------------------

def test_framework_estimator_values_decode_as_json():
    hps = hyperparameters.load({"epochs": "10", "lr": "0.1", "flag": "true", "opt": '"adam"', "none": "null",
                                "layers": "[1, 2]"})
    assert hps.user == {"epochs": 10, "lr": 0.1, "flag": True, "opt": "adam", "none": None, "layers": [1, 2]}


def test_generic_estimator_values_keep_the_raw_string_when_not_json():
    hps = hyperparameters.load({"flag": "True", "opt": "adam", "spaced": "a b", "epochs": "10"})
    assert hps.user == {"flag": "True", "opt": "adam", "spaced": "a b", "epochs": 10}


def test_sagemaker_keys_are_framework_parameters_not_user_hyperparameters():
    hps = hyperparameters.load({"epochs": "1", "sagemaker_program": '"train.py"', "sagemaker_region": '"us-east-1"',
                                "sagemaker_mpi_enabled": "true", "_tuning_objective_metric": '"loss"'})
    assert hps.user == {"epochs": 1}
    assert hps.framework == {"sagemaker_mpi_enabled": True}
    assert hps.sagemaker("sagemaker_program") == "train.py"


# ---- SM_* variables ------------------------------------------------------------------

def test_env_values_follow_the_toolkit_format():
    assert encoding.env_value("s p") == "s p"
    assert encoding.env_value(None) == ""
    assert encoding.env_value(10) == "10"
    assert encoding.env_value(True) == "true"
    assert encoding.env_value({"b": 1, "a": [1, "é"]}) == '{"a":[1,"\\u00e9"],"b":1}'


def test_sm_variables_match_the_toolkit(tmp_path):
    env = training_env(tmp_path, hps={"epochs": "10", "lr": "0.1", "opt": "adam", "sagemaker_program": '"train.py"',
                                      "sagemaker_pytorch_ddp_enabled": "true"},
                       channels={"train": {"TrainingInputMode": "File"}, "test": {}})
    sm = env.sm_variables()
    base = str(tmp_path)
    assert sm["SM_MODEL_DIR"] == f"{base}/model"
    assert sm["SM_INPUT_DIR"] == f"{base}/input"
    assert sm["SM_INPUT_CONFIG_DIR"] == f"{base}/input/config"
    assert sm["SM_OUTPUT_DIR"] == f"{base}/output"
    assert sm["SM_OUTPUT_DATA_DIR"] == f"{base}/output/data"
    assert sm["SM_OUTPUT_INTERMEDIATE_DIR"] == f"{base}/output/intermediate"
    assert sm["SM_CHANNELS"] == '["test","train"]'
    assert sm["SM_CHANNEL_TRAIN"] == f"{base}/input/data/train"
    assert sm["SM_CHANNEL_TEST"] == f"{base}/input/data/test"
    assert sm["SM_HPS"] == '{"epochs":10,"lr":0.1,"opt":"adam"}'
    assert sm["SM_HP_EPOCHS"] == "10" and sm["SM_HP_LR"] == "0.1" and sm["SM_HP_OPT"] == "adam"
    assert sm["SM_FRAMEWORK_PARAMS"] == '{"sagemaker_pytorch_ddp_enabled":true}'
    assert sm["SM_USER_ARGS"] == '["--epochs","10","--lr","0.1","--opt","adam"]'
    assert sm["SM_USER_ENTRY_POINT"] == "train.py"
    assert sm["SM_MODULE_NAME"] == "train"
    assert sm["SM_MODULE_DIR"] == f"{base}/code"
    assert sm["SM_LOG_LEVEL"] == "20"
    assert sm["SM_HOSTS"] == '["algo-1"]' and sm["SM_CURRENT_HOST"] == "algo-1"
    assert sm["SM_CURRENT_INSTANCE_TYPE"] == "local"
    assert sm["SM_CURRENT_INSTANCE_GROUP"] == "homogeneousCluster"
    assert sm["SM_CURRENT_INSTANCE_GROUP_HOSTS"] == '["algo-1"]'
    assert sm["SM_INSTANCE_GROUPS"] == '["homogeneousCluster"]'
    assert json.loads(sm["SM_INSTANCE_GROUPS_DICT"])["homogeneousCluster"]["hosts"] == ["algo-1"]
    assert sm["SM_DISTRIBUTION_INSTANCE_GROUPS"] == '["homogeneousCluster"]'
    assert sm["SM_IS_HETERO"] == "false"
    assert sm["SM_NETWORK_INTERFACE_NAME"] == "eth0"
    assert sm["SM_NUM_GPUS"] == "0" and sm["SM_NUM_CPUS"] == "2"
    assert json.loads(sm["SM_RESOURCE_CONFIG"])["hosts"] == ["algo-1"]
    assert json.loads(sm["SM_INPUT_DATA_CONFIG"]) == {"train": {"TrainingInputMode": "File"}, "test": {}}
    assert sm["SM_CHECKPOINT_DIR"] == f"{base}/checkpoints"
    training = json.loads(sm["SM_TRAINING_ENV"])
    assert training["hyperparameters"] == {"epochs": 10, "lr": 0.1, "opt": "adam"}
    assert training["channel_input_dirs"]["train"] == f"{base}/input/data/train"
    assert training["master_hostname"] == "algo-1" and training["is_master"] is True
    assert training["module_name"] == "train" and training["framework_module"] is None
    # compact, sorted: byte-identical to what the toolkit writes
    assert sm["SM_TRAINING_ENV"] == json.dumps(training, sort_keys=True, separators=(",", ":"))
    # every name the contract lists is there
    for name in ("SM_MODEL_DIR SM_INPUT_DIR SM_INPUT_CONFIG_DIR SM_OUTPUT_DIR SM_OUTPUT_DATA_DIR "
                 "SM_OUTPUT_INTERMEDIATE_DIR SM_CHANNELS SM_HPS SM_FRAMEWORK_PARAMS SM_USER_ARGS "
                 "SM_USER_ENTRY_POINT SM_MODULE_NAME SM_MODULE_DIR SM_LOG_LEVEL SM_HOSTS SM_CURRENT_HOST "
                 "SM_CURRENT_INSTANCE_TYPE SM_CURRENT_INSTANCE_GROUP SM_CURRENT_INSTANCE_GROUP_HOSTS "
                 "SM_INSTANCE_GROUPS SM_INSTANCE_GROUPS_DICT SM_DISTRIBUTION_INSTANCE_GROUPS SM_IS_HETERO "
                 "SM_NETWORK_INTERFACE_NAME SM_NUM_GPUS SM_NUM_CPUS SM_RESOURCE_CONFIG SM_INPUT_DATA_CONFIG "
                 "SM_TRAINING_ENV").split():
        assert name in sm, name


def test_no_entry_point_gives_empty_strings_not_none(tmp_path):
    sm = training_env(tmp_path, program=None).sm_variables()
    assert sm["SM_USER_ENTRY_POINT"] == "" and sm["SM_MODULE_NAME"] == ""


# ---- argv --------------------------------------------------------------------------

def test_argv_sorted_long_and_short_options_formatted_like_the_toolkit():
    args = encoding.to_cmd_args({"lr": 0.1, "b": 2, "flag": True, "name": "x", "none": None, "d": {"y": 1, "x": "a"}})
    assert args == ["-b", "2", "-d", "x=a,y=1", "--flag", "True", "--lr", "0.1", "--name", "x", "--none", ""]


@pytest.mark.parametrize("value", ["a b", "it's \"quoted\"", "$(touch /tmp/pwned)", "x; rm -rf /", "`id`", "a\nb", ""])
def test_hostile_values_arrive_as_one_unchanged_argument(tmp_path, value):
    env = training_env(tmp_path, hps={"value": value})
    entry = entrypoint.EntryPoint(entrypoint.SCRIPT, "/code/train.py", "/code", "train.py", "train.py")
    plan = distributed.plan(["algo-1"], "algo-1", 29500, False, 0)
    built = launch.build(entry, env, plan, "/usr/bin/python3", {"PATH": "/bin"})
    assert built.argv == ["/usr/bin/python3", "/code/train.py", "--value", value]
    # and really: a child process sees exactly that one argument
    shown = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *built.argv[2:]],
                           stdout=subprocess.PIPE, check=True).stdout
    assert json.loads(shown) == ["--value", value]


# ---- launch environment ---------------------------------------------------------------

def test_python_entry_points_get_unbuffered_output_and_code_dir_first_on_pythonpath(tmp_path):
    env = training_env(tmp_path)
    entry = entrypoint.EntryPoint(entrypoint.SCRIPT, "/code/train.py", "/code", "train.py", "train.py")
    plan = distributed.plan(["algo-1"], "algo-1", 29500, False, 0)
    built = launch.build(entry, env, plan, "py", {"PYTHONPATH": "/a:/b", "KEEP": "1"})
    assert built.env["PYTHONUNBUFFERED"] == "1"
    assert built.env["PYTHONPATH"] == "/code:/a:/b"
    assert built.env["KEEP"] == "1" and built.cwd == "/code"
    assert built.env["MASTER_ADDR"] == "127.0.0.1" and built.env["WORLD_SIZE"] == "1"
    assert built.env["CURRENT_HOST"] == "algo-1"
    shell = entrypoint.EntryPoint(entrypoint.EXECUTABLE, "/code/run.sh", "/code", "run.sh", "run.sh")
    built = launch.build(shell, env, plan, "py", {"PYTHONPATH": "/a"})
    assert built.env["PYTHONPATH"] == "/a" and "PYTHONUNBUFFERED" not in built.env


def test_distributed_rendezvous_and_torchrun_command():
    plan = distributed.plan(["algo-1", "algo-2"], "algo-2", 29500, True, 0)
    assert plan.env() == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "NODE_RANK": "1"}
    script = entrypoint.EntryPoint(entrypoint.SCRIPT, "/code/t.py", "/code", "t.py", "t.py")
    assert plan.command(script, "py", ["--x", "1"]) == [
        "py", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", "1",
        "--master_addr", "algo-1", "--master_port", "29500", "/code/t.py", "--x", "1"]
    assert distributed.plan(["a"], "a", 1, True, 4).nproc_per_node == 4


def test_torch_distributed_is_requested_by_either_hyperparameter_or_the_setting():
    assert distributed.torch_requested(hyperparameters.load({"sagemaker_torch_distributed_enabled": "true"}), False)
    assert distributed.torch_requested(hyperparameters.load({"sagemaker_pytorch_ddp_enabled": "True"}), False)
    assert not distributed.torch_requested(hyperparameters.load({"sagemaker_pytorch_ddp_enabled": "false"}), False)
    assert distributed.torch_requested(hyperparameters.load({}), True)


def test_mpi_is_refused_with_a_clear_message():
    entry = entrypoint.EntryPoint(entrypoint.SCRIPT, "/c/t.py", "/c", "t.py", "t.py")
    with pytest.raises(distributed.DistributionError, match="not supported by smsuper"):
        distributed.refuse_mpi(hyperparameters.load({"sagemaker_mpi_enabled": "true"}), entry)
    distributed.refuse_mpi(hyperparameters.load({"sagemaker_mpi_enabled": "false"}), entry)


def test_host_wait_backs_off_and_names_what_never_resolved():
    clock = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    with pytest.raises(hostwait.HostsUnresolved, match="algo-2"):
        hostwait.wait_for_hosts(["algo-1", "algo-2"], 30, resolves=lambda h: h == "algo-1",
                                sleep=sleep, clock=lambda: clock[0])
    assert sleeps[:3] == [0.1, 0.2, 0.4] and max(sleeps) <= 5.0
    resolved_after = {"algo-2": 3}

    def eventually(host):
        resolved_after[host] = resolved_after.get(host, 0) - 1
        return resolved_after[host] < 0

    hostwait.wait_for_hosts(["algo-2"], 30, resolves=eventually, sleep=sleep, clock=lambda: clock[0])


# ---- entry point resolution ---------------------------------------------------------------

def test_python_script_in_the_code_dir(tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    entry = entrypoint.resolve(entrypoint.Configured("train.py", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert entry.kind == entrypoint.SCRIPT and entry.command("py", ["-a"]) == ["py", str(tmp_path / "train.py"), "-a"]
    assert entry.is_python


def test_package_is_installed_and_run_as_a_module(tmp_path):
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "requirements.txt").write_text("six\n")
    entry = entrypoint.resolve(entrypoint.Configured("trainer/main.py", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert entry.kind == entrypoint.PACKAGE and entry.command("py", []) == ["py", "-m", "trainer.main"]
    install = requirements.plan(entry, "py", True, {})
    assert install.argv == ["py", "-m", "pip", "install", ".", "-r", "requirements.txt"]
    assert install.cwd == str(tmp_path)


def test_requirements_beside_a_script_are_installed_unless_disabled(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "requirements.txt").write_text("six\n")
    entry = entrypoint.resolve(entrypoint.Configured("train.py", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    install = requirements.plan(entry, "py", True, {"PIP_PROGRESS_BAR": "on"})
    assert install.argv == ["py", "-m", "pip", "install", "-r", "requirements.txt"]
    assert install.env["PIP_PROGRESS_BAR"] == "on" and install.env["PIP_NO_INPUT"] == "1"
    assert requirements.plan(entry, "py", False, {}) is None


def test_shell_scripts_run_directly_or_through_their_interpreter(tmp_path):
    runnable = tmp_path / "run.sh"
    runnable.write_text("#!/bin/sh\necho hi\n")
    runnable.chmod(0o755)
    entry = entrypoint.resolve(entrypoint.Configured("run.sh", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert entry.kind == entrypoint.EXECUTABLE and entry.command("py", ["-x"]) == [str(runnable), "-x"]
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    entry = entrypoint.resolve(entrypoint.Configured("plain.sh", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert entry.command("py", []) == ["/bin/sh", str(plain)]
    bash = tmp_path / "b.sh"
    bash.write_text("#!/usr/bin/env bash\n")
    entry = entrypoint.resolve(entrypoint.Configured("b.sh", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert entry.command("py", []) == ["/usr/bin/env", "bash", str(bash)]


def test_training_module_wins_and_runs_in_the_image_python(tmp_path):
    entry = entrypoint.resolve(entrypoint.Configured("train.py", "SAGEMAKER_PROGRAM"), "fw.training:main",
                               str(tmp_path), "")
    assert entry.kind == entrypoint.FRAMEWORK
    argv = entry.command(sys.executable, [])
    module = tmp_path / "fw"
    module.mkdir()
    (module / "__init__.py").write_text("")
    (module / "training.py").write_text("def main():\n    print('framework ran')\n")
    out = subprocess.run(argv, cwd=str(tmp_path), stdout=subprocess.PIPE, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout
    assert out.strip() == b"framework ran"


def test_train_on_path_when_nothing_is_configured(tmp_path):
    program = tmp_path / "train"
    program.write_text("#!/usr/bin/env python3\n")
    program.chmod(0o755)
    entry = entrypoint.resolve(None, None, "/nonexistent", f"/nowhere:{tmp_path}")
    assert entry.kind == entrypoint.ON_PATH and entry.target == str(program)
    assert entry.speaks_python and not entry.is_python


def test_nothing_found_lists_what_was_looked_for_where(tmp_path):
    with pytest.raises(entrypoint.EntryPointNotFound) as raised:
        entrypoint.resolve(None, None, str(tmp_path / "code"), f"/usr/bin:{tmp_path}")
    message = str(raised.value)
    for expected in ("SAGEMAKER_PROGRAM", "sagemaker_program", "SAGEMAKER_TRAINING_MODULE", "`train` on PATH",
                     "/usr/bin", str(tmp_path)):
        assert expected in message
    (tmp_path / "other.py").write_text("")
    with pytest.raises(entrypoint.EntryPointNotFound) as raised:
        entrypoint.resolve(entrypoint.Configured("train.py", "SAGEMAKER_PROGRAM"), None, str(tmp_path), "")
    assert str(tmp_path / "train.py") in str(raised.value) and "other.py" in str(raised.value)


def test_submit_directory_archive_is_extracted_into_an_empty_code_dir(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print(1)\n")
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "train.py", arcname="train.py")
    code = sourcedir.locate(str(archive), "SAGEMAKER_SUBMIT_DIRECTORY", str(tmp_path / "code"))
    assert code.path == str(tmp_path / "code") and (tmp_path / "code" / "train.py").is_file()
    # a non-empty code dir is never overwritten: the archive goes elsewhere
    again = sourcedir.locate(str(archive), "SAGEMAKER_SUBMIT_DIRECTORY", str(tmp_path / "code"))
    assert again.path != str(tmp_path / "code") and os.path.isfile(os.path.join(again.path, "train.py"))
    assert sourcedir.locate(str(source), "x", "/opt/ml/code").path == str(source)
    # an s3:// location is not downloaded over code that is already there, as in the toolkit
    remote = sourcedir.locate("s3://bucket/sourcedir.tar.gz", "x", str(tmp_path / "code"))
    assert remote.remote and remote.path == str(tmp_path / "code")


def test_archive_members_escaping_the_code_dir_are_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../escaped")
    with pytest.raises(sourcedir.SourceDirError, match="outside"):
        sourcedir.locate(str(archive), "x", str(tmp_path / "code"))
    assert not (tmp_path / "escaped").exists()


# ---- failure reason ---------------------------------------------------------------------

TRACEBACK = b"""epoch 1 loss=0.5
Traceback (most recent call last):
  File "/opt/ml/code/train.py", line 10, in <module>
    main()
  File "/opt/ml/code/train.py", line 7, in main
    raise ValueError("learning rate must be positive")
ValueError: learning rate must be positive
"""


def test_headline_is_the_final_line_of_the_last_traceback():
    lines = failure.clean_lines(b"Traceback (most recent call last):\n  File \"x\"\nKeyError: 'a'\n\n" + TRACEBACK)
    assert failure.exception_line(lines) == "ValueError: learning rate must be positive"


def test_a_launchers_wrapper_error_gives_way_to_the_programs_own():
    text = TRACEBACK + (b"Traceback (most recent call last):\n  File \"run.py\", line 1\n"
                        b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert failure.exception_line(failure.clean_lines(text)) == "ValueError: learning rate must be positive"


def test_failure_summary_order_and_budget():
    lines = failure.clean_lines(TRACEBACK)
    summary = failure.compose(failure.exception_line(lines), failure.status_sentence("train.py", 1, None), lines)
    assert summary.splitlines()[0] == "ValueError: learning rate must be positive"
    assert summary.splitlines()[1] == "train.py exited with code 1."
    assert 'raise ValueError("learning rate must be positive")' in summary
    noisy = [f"line {i} " + "é" * 40 for i in range(500)] + ["Boom: the end"]
    summary = failure.compose("RuntimeError: " + "ü" * 2000, "train.py was killed by SIGKILL (exit code 137).", noisy)
    assert len(summary.encode("utf-8")) <= 1024 and len(summary) <= 1024
    summary.encode("utf-8").decode("utf-8")  # valid UTF-8
    summary = failure.compose(None, failure.status_sentence("train.py", 137, 9), noisy)
    assert summary.startswith("train.py was killed by SIGKILL (exit code 137).")
    assert summary.endswith("Boom: the end") and len(summary.encode("utf-8")) <= 1024


def test_progress_lines_colours_and_invalid_bytes_are_cleaned():
    lines = failure.clean_lines(b"\r 10%|#\r 50%|#####\r100%|##########\n\x1b[31mred\x1b[0m\n\xff\xfebad\n\n")
    assert lines == ["100%|##########", "red", "\ufffd\ufffdbad"]


def test_stderr_tail_is_bounded():
    tail = failure.StderrTail(limit=100)
    for i in range(1000):
        tail.feed(b"%05d\n" % i)
    assert len(tail.data()) == 100 and tail.data().endswith(b"00999\n")


def test_failure_file_of_the_script_is_never_overwritten(tmp_path):
    paths = Paths(str(tmp_path))
    before = outcome.snapshot(paths.failure_file)
    os.makedirs(paths.output_dir)
    Path(paths.failure_file).write_text("my own reason")
    assert not outcome.write_failure(paths, "smsuper's reason", before)
    assert Path(paths.failure_file).read_text() == "my own reason"
    before = outcome.snapshot(paths.failure_file)  # unchanged since: stale, so ours replaces it
    assert outcome.write_failure(paths, "smsuper's reason", before)
    assert Path(paths.failure_file).read_text() == "smsuper's reason"


# ---- CPUs and GPUs -----------------------------------------------------------------------

def test_cpu_count_follows_a_restricted_affinity():
    code = "from smsuper.sagemaker import resources; print(resources.cpu_count())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=str(ROOT),
                         stdout=subprocess.PIPE, check=True).stdout
    assert out.strip() == b"1"


def _fake_cgroup(tmp_path, membership: str, files: dict):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(membership)
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_quota_caps_the_count(tmp_path):
    proc, root = _fake_cgroup(tmp_path, "0::/job\n", {"cpu.max": "max 100000\n", "job/cpu.max": "150000 100000\n"})
    assert resources.cgroup_cpu_limit(proc, root) == 1.5
    assert resources.cpu_count(proc, root) == min(2, resources.affinity_count())


def test_cgroup_v1_quota_caps_the_count(tmp_path):
    proc, root = _fake_cgroup(tmp_path, "4:cpu,cpuacct:/\n1:memory:/\n",
                              {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert resources.cpu_count(proc, root) == 1
    proc, root = _fake_cgroup(tmp_path / "none", "4:cpu:/\n",
                              {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert resources.cgroup_cpu_limit(proc, root) is None


def test_gpu_count_from_the_driver_and_visible_devices(tmp_path):
    gpus = tmp_path / "driver" / "nvidia" / "gpus"
    for bus in ("0000:00:1e.0", "0000:00:1f.0", "0000:00:20.0", "0000:00:21.0"):
        (gpus / bus).mkdir(parents=True)
    proc = str(tmp_path)
    assert resources.gpu_count({}, proc) == 4
    assert resources.gpu_count({"CUDA_VISIBLE_DEVICES": "0,2"}, proc) == 2
    assert resources.gpu_count({"CUDA_VISIBLE_DEVICES": ""}, proc) == 0
    assert resources.gpu_count({"CUDA_VISIBLE_DEVICES": "-1"}, proc) == 0
    assert resources.gpu_count({"CUDA_VISIBLE_DEVICES": "1,7,2"}, proc) == 1  # CUDA stops at the first invalid
    assert resources.gpu_count({"NVIDIA_VISIBLE_DEVICES": "none"}, proc) == 0
    assert resources.gpu_count({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "GPU-abc"}, proc) == 1
    assert resources.gpu_count({"PATH": str(tmp_path / "empty")}, str(tmp_path / "no-proc")) == 0
