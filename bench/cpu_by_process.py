"""Where the real model's stacks spend their CPU under load, process by process:
`python3 bench/cpu_by_process.py [smsuper] [toolkit]` (run it under the benchmark's lock).

A diagnostic for figure 9 (not judged): smsuper and the official toolkit with the
scikit-learn model, a 1-row CSV, wrk for 5 s at 16 and at 64 connections after the usual
warm-up. For each run: requests/s, server CPU per request, how many of the machine's CPUs the
stack used (its CPU seconds over the run's wall time) and wrk's own share, and each process's
CPU per request and busy share. A stack whose requests/s does not follow its CPU per request
shows here either as CPUs it left idle (a worker waiting: busy well under 100%) or as a
machine whose CPUs other work took (the stack's CPUs plus wrk's well under the machine's).
"""
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import figures  # noqa: E402
import harness  # noqa: E402
import run  # noqa: E402
import stacks  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:60]
    except OSError:
        return "?"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(names) -> None:
    with run.standalone_workdir("cpu-by-process-") as (work, pyz):
        measure(names, work, pyz)


def measure(names, work: Path, pyz: Path) -> None:
    python = run.default_python()
    ctx = run.unpacked_context(work, pyz, python)
    ctx.bench_python = run.bench_venv(python)["python"]
    body = (ctx.smsuper_base("sklearn") / "bodies" / "rows-1.csv").read_text()
    request = {"body": body, "content_type": "text/csv", "accept": "text/csv"}
    made = {"smsuper": lambda: stacks.Smsuper(ctx, model="sklearn", python=ctx.bench_python),
            "toolkit": lambda: stacks.Toolkit(ctx, model="sklearn")}
    for name in names or list(made):
        stack = made[name]().start()
        try:
            stack.wait_ready(120)
            figures.warm_up(stack, figures.FULL, print, **request)
            for connections in (16, 64):
                pids = stack.processes()
                before = {pid: cpu_seconds(pid) for pid in pids}
                wrk_before, began = children_cpu(), time.monotonic()
                result = harness.wrk(stack.port, "/invocations", connections, 5, **request)
                wall, wrk_cpu = time.monotonic() - began, children_cpu() - wrk_before
                spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
                count, total = result["requests"], sum(spent.values())
                print(f"{name} c={connections}: {result['rps']:.0f} req/s, server CPU {total * 1e6 / count:.0f} "
                      f"µs/request, the stack used {total / wall:.2f} CPUs, wrk {wrk_cpu / wall:.2f}")
                for pid in sorted(spent, key=lambda p: -spent[p]):
                    if spent[pid] > 0.01:
                        print(f"   {spent[pid] * 1e6 / count:6.0f} µs/request  busy {spent[pid] / wall:4.0%}  "
                              f"{command_line(pid)}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
