"""Figure 10, multi-model endpoints: smsuper's (SAGEMAKER_MULTI_MODEL=true) against the official
toolkit's multi-model stack (sagemaker-inference on multi-model-server), both up in the same run.

Both get the same model directories (make_models): code/inference.py, where smsuper (and the
platform's convention) looks for a model's code, and the very same file at the directory's top,
where the toolkit's worker imports `inference` from (multi-model-server puts the model's
directory on its worker's PYTHONPATH; the toolkit's handler service adds code/ to the
environment only, after its interpreter has started). Each model has 1 worker on both stacks
(their multi-model defaults). The platform's calls: POST /models {"model_name", "url"},
POST /models/NAME/invoke, DELETE /models/NAME.

  a. load time      POST /models to its 200, a trivial model and a BIG_MIB one; each stack's
                    first load is a warm-up, not counted; loads of the two stacks alternate
  b. throughput     wrk on /models/m0/invoke (one model) and on m0..m9 in turn (wrk_json.lua's
                    BENCH_PATHS), 16 connections, rounds alternating between the stacks after
                    their warm-up (the JVM's as figure 1's); server CPU per request beside it
  c. memory         the whole container with MODELS trivial models loaded: every process of its
                    PID namespace, sum of PSS and of RSS
  d. unload         with those models loaded, a BIG_MIB model is loaded and unloaded: RSS and
                    PSS of every process before the load, while loaded and after the DELETE
                    answered (and its processes are gone); the share given back is what the
                    DELETE freed over what the load took, both as the whole container's PSS
  e. cycles         smsuper only: CYCLES load/unload cycles of a trivial model; PID 1's RSS and
                    open descriptors after a warm-up of WARM_CYCLES, then after the cycles

Returns plain data; report.py judges the goals.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import harness
import stacks
from figures import JVM_WARMUP_STEP, Profile, _cpu_of
from harness import BenchError, summary

MODELS = 10
BIG_MIB = 200
CONNECTIONS = 16
WARM_CYCLES = 10
LOAD_LIMIT = 360.0  # the platform's own patience with a load


# ---- the models --------------------------------------------------------------------------

def make_model(ctx: stacks.Context, name: str, source: str) -> Path:
    """ctx.workdir/mme-models/NAME with the handler `source` at code/inference.py and at the top."""
    directory = ctx.workdir / "mme-models" / name
    (directory / "code").mkdir(parents=True)
    for path in (directory / "code" / "inference.py", directory / "inference.py"):
        path.write_text(source)
        os.chmod(path, 0o644)
    for path in (directory.parent, directory, directory / "code"):
        os.chmod(path, 0o755)
    return directory


def model_source(model: str, mib: Optional[int] = None) -> str:
    source = (stacks.APPS / f"model_{model}.py").read_text()
    if mib is not None:
        source = source.replace("MODEL_MIB = 200", f"MODEL_MIB = {int(mib)}")
    return source


# ---- the platform's calls -------------------------------------------------------------------

def load(stack: stacks.Stack, name: str, url: Path) -> float:
    """Seconds from sending POST /models to its 200."""
    body = json.dumps({"model_name": name, "url": str(url)}).encode()
    began = time.perf_counter()
    status, answer = harness.http_request(stack.port, "POST", "/models", body, timeout=LOAD_LIMIT)
    elapsed = time.perf_counter() - began
    if status != 200:
        raise BenchError(f"{stack.name}: POST /models {name} answered {status}: {answer[:300]!r}\n"
                         f"{stack.stderr_tail()}")
    return elapsed


def unload(stack: stacks.Stack, name: str) -> float:
    began = time.perf_counter()
    status, answer = harness.http_request(stack.port, "DELETE", f"/models/{name}", timeout=LOAD_LIMIT)
    elapsed = time.perf_counter() - began
    if status != 200:
        raise BenchError(f"{stack.name}: DELETE /models/{name} answered {status}: {answer[:300]!r}")
    return elapsed


def invoke(stack: stacks.Stack, name: str) -> None:
    status, answer = harness.http_request(stack.port, "POST", f"/models/{name}/invoke", b"[[1.0, 2.0, 3.0]]",
                                          timeout=30)
    if status != 200:
        raise BenchError(f"{stack.name}: POST /models/{name}/invoke answered {status}: {answer[:300]!r}")


# ---- /proc ------------------------------------------------------------------------------------

def namespace_pids(stack: stacks.Stack) -> List[int]:
    """Every process of the stack's PID namespace (the container's processes)."""
    return harness.namespace_members(harness.pid_namespace(stack.root_pid()))


def per_process(pids: List[int]) -> Dict[int, Dict]:
    found = {}
    for pid in pids:
        try:
            rollup = harness.smaps_rollup(pid)
        except OSError:
            continue
        found[pid] = {"title": harness.title(pid)[:80], "started": harness.start_time(pid),
                      "rss_kb": rollup.get("Rss", 0), "pss_kb": rollup.get("Pss", 0)}
    return found


def _total(snapshot: Dict[int, Dict], key: str) -> float:
    return round(sum(p[key] for p in snapshot.values()) / 1024, 1)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_gone(processes: List[Tuple[int, Optional[int]]], limit: float = 30.0) -> float:
    """Seconds until none of (pid, start time) is alive any more."""
    began = time.monotonic()
    harness.wait_until(lambda: not any(harness.alive(pid, started) for pid, started in processes), limit,
                       "the unloaded model's processes to exit")
    return time.monotonic() - began


# ---- the figure -------------------------------------------------------------------------------

def multi_model(ctx: stacks.Context, profile: Profile, say: Callable[[str], None]) -> Dict:
    loads = max(2, profile.runs + 2)  # counted loads of a trivial model per stack
    big_loads = max(1, profile.runs)
    cycles = 200 if profile.name == "full" else 20
    trivial = model_source("trivial")
    urls = {f"m{i}": make_model(ctx, f"m{i}", trivial) for i in range(MODELS)}
    urls.update({f"t{i}": make_model(ctx, f"t{i}", trivial) for i in range(loads + 1)})
    urls["cycle"] = make_model(ctx, "cycle", trivial)
    urls["big"] = make_model(ctx, "big", model_source("big", BIG_MIB))

    running: List[stacks.Stack] = []
    result: Dict = {"models": MODELS, "big_mib": BIG_MIB, "connections": CONNECTIONS, "workers_per_model": 1}
    try:
        mine = stacks.SmsuperMultiModel(ctx).start()
        running.append(mine)
        toolkit = stacks.ToolkitMultiModel(ctx).start()
        running.append(toolkit)
        for stack in running:
            stack.wait_ready(120)
        pair = {"smsuper": mine, "official-toolkit": toolkit}

        # a. load times (the first load of each stack is a warm-up: the toolkit's JVM loads classes)
        for stack in running:
            load(stack, f"t{loads}", urls[f"t{loads}"])
            unload(stack, f"t{loads}")
        times: Dict[str, Dict[str, List[float]]] = {n: {"trivial": [], "unload": [], "big": [], "big_unload": []}
                                                    for n in pair}
        for i in range(loads):
            for name, stack in pair.items():
                times[name]["trivial"].append(load(stack, f"t{i}", urls[f"t{i}"]))
                invoke(stack, f"t{i}")
                times[name]["unload"].append(unload(stack, f"t{i}"))
        for _ in range(big_loads):
            for name, stack in pair.items():
                times[name]["big"].append(load(stack, "big", urls["big"]))
                times[name]["big_unload"].append(unload(stack, "big"))
        result["load_s"] = {n: {k: summary(v) for k, v in t.items()} for n, t in times.items()}
        result["load_ratios"] = {
            "trivial": summary([a / b for a, b in zip(times["smsuper"]["trivial"], times["official-toolkit"]["trivial"])]),
            "big": summary([a / b for a, b in zip(times["smsuper"]["big"], times["official-toolkit"]["big"])])}
        say(f"  load s, trivial: smsuper {result['load_s']['smsuper']['trivial']['median']}, toolkit "
            f"{result['load_s']['official-toolkit']['trivial']['median']}; {BIG_MIB} MiB: smsuper "
            f"{result['load_s']['smsuper']['big']['median']}, toolkit {result['load_s']['official-toolkit']['big']['median']}")

        # c. memory with MODELS models loaded (and at rest, none loaded, for comparison)
        result["memory"] = {}
        for name, stack in pair.items():
            empty = stacks.stack_memory(namespace_pids(stack))
            for i in range(MODELS):
                load(stack, f"m{i}", urls[f"m{i}"])
                invoke(stack, f"m{i}")
            time.sleep(0.5)
            result["memory"][name] = {"none_loaded": empty, "loaded": stacks.stack_memory(namespace_pids(stack))}
        say("  memory with %d models, PSS MiB: %s" % (MODELS, ", ".join(
            f"{n} {m['loaded']['pss_mib']}" for n, m in result["memory"].items())))

        # b. throughput
        result["throughput"] = _throughput(pair, profile, say)

        # d. what an unload gives back
        result["unload"] = {name: _give_back(stack, urls["big"]) for name, stack in pair.items()}
        say("  unload of the %d MiB model gives back: %s" % (BIG_MIB, ", ".join(
            f"{n} {u['given_back_share']:.1%} of its PSS" for n, u in result["unload"].items())))

        for stack in running:
            for i in range(MODELS):
                unload(stack, f"m{i}")

        # e. cycles, smsuper only: its PID 1 is what must not grow
        result["cycles"] = _cycles(mine, urls["cycle"], cycles)
        say(f"  {cycles} load/unload cycles: PID 1 RSS {result['cycles']['rss_kb_before']} -> "
            f"{result['cycles']['rss_kb_after']} kB, fds {result['cycles']['fds_before']} -> "
            f"{result['cycles']['fds_after']}")
    finally:
        for stack in running:
            stack.stop()
    return result


def _throughput(pair: Dict[str, stacks.Stack], profile: Profile, say: Callable[[str], None]) -> Dict:
    cases = {"one model": ["/models/m0/invoke"],
             f"{MODELS} models round robin": [f"/models/m{i}/invoke" for i in range(MODELS)]}
    for stack in pair.values():
        _warm_up(stack, cases[f"{MODELS} models round robin"], profile, say)
    figure: Dict = {}
    for label, paths in cases.items():
        runs: Dict[str, List[Dict]] = {n: [] for n in pair}
        for _ in range(profile.rounds):
            for name, stack in pair.items():
                runs[name].append(_round(stack, paths, profile.wrk_seconds))
        figure[label] = {n: {"rps": summary([r["rps"] for r in rs], 0),
                             "p50_ms": summary([r["p50_ms"] for r in rs], 2),
                             "p99_ms": summary([r["p99_ms"] for r in rs], 2),
                             "server_cpu_us_per_request": summary([r["server_cpu_us_per_request"] for r in rs], 0),
                             "errors": sum(r["errors"] for r in rs)} for n, rs in runs.items()}
        figure[label]["ratio"] = summary([a["rps"] / b["rps"] for a, b in zip(runs["smsuper"], runs["official-toolkit"])
                                          if b["rps"]])
        say(f"  {label}: smsuper {figure[label]['smsuper']['rps']['median']:,.0f} req/s, toolkit "
            f"{figure[label]['official-toolkit']['rps']['median']:,.0f} req/s")
    return figure


def _round(stack: stacks.Stack, paths: List[str], seconds: float) -> Dict:
    """One wrk run and the server CPU it cost (every process of the namespace), per request."""
    pids = namespace_pids(stack)
    before = _cpu_of(pids)
    run = harness.wrk(stack.port, paths[0], CONNECTIONS, seconds, paths=paths)
    spent = _cpu_of(pids) - before
    run["server_cpu_us_per_request"] = spent * 1e6 / run["requests"] if run["requests"] else 0.0
    return run


def _warm_up(stack: stacks.Stack, paths: List[str], profile: Profile, say: Callable[[str], None]) -> None:
    """As figures.warm_up, on the models' routes: 1 s for smsuper; the JVM at least
    profile.jvm_warmup_seconds, in steps, and more while its CPU per request still falls."""
    if not stack.jvm:
        _round(stack, paths, 1)
        return
    spent, previous, trail = 0.0, None, []
    while True:
        step = min(JVM_WARMUP_STEP, profile.jvm_warmup_max_seconds - spent)
        cost = _round(stack, paths, step)["server_cpu_us_per_request"]
        spent += step
        trail.append(round(cost))
        if spent >= profile.jvm_warmup_max_seconds or (
                spent >= profile.jvm_warmup_seconds and previous is not None and cost >= 0.95 * previous):
            break
        previous = cost
    say(f"  {stack.name}: JVM warm-up {spent:g} s, server CPU µs/request per {JVM_WARMUP_STEP:g} s step: {trail}")


def _give_back(stack: stacks.Stack, url: Path) -> Dict:
    before = per_process(namespace_pids(stack))
    load(stack, "big", url)
    invoke(stack, "big")
    time.sleep(0.5)
    loaded = per_process(namespace_pids(stack))
    new = [(pid, p["started"]) for pid, p in loaded.items() if pid not in before]
    took = unload(stack, "big")
    lingering = sum(1 for pid, started in new if harness.alive(pid, started))
    gone_after = wait_gone(new)
    time.sleep(0.5)
    after = per_process(namespace_pids(stack))
    rows = []
    for pid in sorted(set(before) | set(loaded) | set(after)):
        row = {"pid": pid, "title": (loaded.get(pid) or before.get(pid) or after.get(pid))["title"]}
        for stage, snapshot in (("before", before), ("loaded", loaded), ("after", after)):
            if pid in snapshot:
                row[f"rss_kb_{stage}"] = snapshot[pid]["rss_kb"]
                row[f"pss_kb_{stage}"] = snapshot[pid]["pss_kb"]
        rows.append(row)
    took_pss = _total(loaded, "pss_kb") - _total(before, "pss_kb")
    freed_pss = _total(loaded, "pss_kb") - _total(after, "pss_kb")
    took_rss = _total(loaded, "rss_kb") - _total(before, "rss_kb")
    freed_rss = _total(loaded, "rss_kb") - _total(after, "rss_kb")
    return {"pss_mib": {"before": _total(before, "pss_kb"), "loaded": _total(loaded, "pss_kb"),
                        "after": _total(after, "pss_kb")},
            "rss_mib": {"before": _total(before, "rss_kb"), "loaded": _total(loaded, "rss_kb"),
                        "after": _total(after, "rss_kb")},
            "load_took_pss_mib": round(took_pss, 1), "unload_freed_pss_mib": round(freed_pss, 1),
            "given_back_share": round(freed_pss / took_pss, 4) if took_pss > 0 else None,
            "given_back_share_rss": round(freed_rss / took_rss, 4) if took_rss > 0 else None,
            "delete_s": round(took, 3), "model_processes": len(new),
            "model_processes_alive_when_delete_answered": lingering,
            "seconds_until_gone_after_delete": round(gone_after, 3), "processes": rows}


def _cycles(stack: stacks.Stack, url: Path, cycles: int) -> Dict:
    pid1 = stack.root_pid()

    def cycle() -> None:
        load(stack, "cycle", url)
        unload(stack, "cycle")

    for _ in range(WARM_CYCLES):
        cycle()
    rss_before, fds_before = harness.status_kb(pid1, "VmRSS"), fd_count(pid1)
    trail = []
    began = time.monotonic()
    for number in range(1, cycles + 1):
        cycle()
        if number % max(1, cycles // 4) == 0:
            trail.append({"cycle": number, "rss_kb": harness.status_kb(pid1, "VmRSS"), "fds": fd_count(pid1)})
    seconds = time.monotonic() - began
    rss_after, fds_after = harness.status_kb(pid1, "VmRSS"), fd_count(pid1)
    return {"cycles": cycles, "warm_up_cycles": WARM_CYCLES, "seconds": round(seconds, 1),
            "rss_kb_before": rss_before, "rss_kb_after": rss_after, "fds_before": fds_before,
            "fds_after": fds_after, "trail": trail}
