"""Two-host torch distributed training, for real: two network namespaces.

Each "host" is a network namespace joined to the other by a veth pair, with
its own hostname (UTS namespace), its own /etc/hosts (bind-mounted in a
mount namespace) mapping algo-1 and algo-2, and its own base directory whose
resourceconfig.json says which host it is. Each runs `smsuper train` as PID 1
with `sagemaker_torch_distributed_enabled`; smsuper launches torchrun, and a
CPU (gloo) all_reduce shows both ranks joined.

Needs root, `ip`, and torch in the interpreter running the tests
(`pip install torch==2.13.0`); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]  # network namespaces, several hosts

RUN_LIMIT = 600  # a safety net against a hang, not a speed bound

SCRIPT = """
    import json, os
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "result.json"), "w") as handle:
        json.dump({"rank": dist.get_rank(), "world_size": dist.get_world_size(), "sum": value.item(),
                   "host": os.environ["SM_CURRENT_HOST"], "node_rank": os.environ["NODE_RANK"],
                   "master_addr": os.environ["MASTER_ADDR"]}, handle)
    dist.destroy_process_group()
    print("rank", os.environ["RANK"], "done", flush=True)
"""


@pytest.fixture(autouse=True)
def _needs() -> None:
    # A failure, not a skip: scripts/install-test-deps.sh installs all of this, and a skip
    # would hide that distributed training went untested.
    missing = [tool for tool in ("ip", "unshare") if not shutil.which(tool)]
    probe = subprocess.run([sys.executable, "-c", "import torch.distributed"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        missing.append("torch (pip install torch==2.13.0)")
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        pytest.fail(f"the two-host test needs {', '.join(missing)}: run scripts/install-test-deps.sh")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture()
def two_hosts():
    """Two namespaces joined by a veth pair: algo-1 at .1, algo-2 at .2."""
    tag = f"smt{os.getpid() % 100000}"
    names = [f"{tag}a", f"{tag}b"]
    addresses = ["10.213.7.1", "10.213.7.2"]
    for name in names:
        sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", f"{tag}x", "type", "veth", "peer", "name", f"{tag}y")
        for name, link, address in zip(names, (f"{tag}x", f"{tag}y"), addresses):
            sh("ip", "link", "set", link, "netns", name)
            sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", link)
            sh("ip", "-n", name, "link", "set", link, "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield list(zip(names, addresses))
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def host_layout(base: Path, host: str, hosts_text: str) -> Path:
    (base / "code").mkdir(parents=True)
    (base / "code" / "train.py").write_text(textwrap.dedent(SCRIPT))
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": host, "hosts": ["algo-1", "algo-2"], "current_instance_type": "ml.c5.xlarge",
        "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.c5.xlarge",
                             "hosts": ["algo-1", "algo-2"]}]}))
    (config / "hyperparameters.json").write_text(json.dumps({
        "sagemaker_program": '"train.py"', "sagemaker_torch_distributed_enabled": "true"}))
    hosts_file = base / "hosts"
    hosts_file.write_text(hosts_text)
    return base


def test_two_hosts_join_one_torch_distributed_job(pyz, base_env, tmp_path, two_hosts):
    hosts_text = "127.0.0.1 localhost\n" + "".join(
        f"{address} algo-{index}\n" for index, (_, address) in enumerate(two_hosts, start=1))
    processes = []
    bases = []
    for index, (namespace, _) in enumerate(two_hosts, start=1):
        host = f"algo-{index}"
        base = host_layout(tmp_path / host, host, hosts_text)
        bases.append(base)
        env = dict(base_env, SAGEMAKER_BASE_DIR=str(base), SMSUPER_HOST_WAIT_TIMEOUT="60")
        # In the host's own mount and UTS namespaces: its /etc/hosts and its hostname, as on the platform.
        inner = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        argv = ["ip", "netns", "exec", namespace, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
                "sh", "-c", inner, "sh", str(base / "hosts"), host, sys.executable, str(pyz), "train"]
        processes.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    outputs = []
    try:
        for proc in processes:
            outputs.append(proc.communicate(timeout=RUN_LIMIT))
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    details = "\n".join(f"--- {index}: exit {proc.returncode}\nstdout:\n{out.decode(errors='replace')}\n"
                        f"stderr:\n{err.decode(errors='replace')}"
                        for index, (proc, (out, err)) in enumerate(zip(processes, outputs), start=1))
    assert [proc.returncode for proc in processes] == [0, 0], details
    results = [json.loads((base / "model" / "result.json").read_text()) for base in bases]
    assert sorted(result["rank"] for result in results) == [0, 1], details
    for index, result in enumerate(results, start=1):
        assert result["world_size"] == 2 and result["sum"] == 3.0, details
        assert result["host"] == f"algo-{index}" and result["node_rank"] == str(index - 1)
        assert result["master_addr"] == "algo-1"
    for base in bases:
        assert (base / "output" / "success").exists()
    assert b"torch.distributed.run" in outputs[0][1]  # smsuper logged the torchrun launch
