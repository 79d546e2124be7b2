"""The figures. Each function measures, repeats, and returns plain data.

Every figure keeps the value of each run and reports the median with its
spread (min-max). None of them judges a bar: report.py does, from the data.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import harness
import stacks
from harness import BenchError, summary

MIB = 1 << 20
CONNECTIONS = (16, 64)


@dataclass(frozen=True)
class Profile:
    """How long and how often: the full run, or --quick for a smoke run."""

    name: str
    runs: int                # repeats of each ping/SIGTERM/relay/memory figure
    rounds: int              # rounds of figure 1 (every stack, every connection count, each round)
    wrk_seconds: float       # one wrk run of figure 1
    ping_seconds: float      # pinging while busy, per run
    warm_starts: int
    cold_starts: int
    sigterm_sleep: float     # seconds each of the 4 in-flight requests takes
    relay_mib: int
    relay_runs: int
    version_runs: int
    restarts: int            # worker restarts before the metrics scrape
    scrapes: int
    idle_seconds: float      # PID 1 wake-ups are counted over this long
    model_mib: int = 200
    jvm_warmup_seconds: float = 15  # load on a JIT-compiled server (the toolkit's JVM) before it is measured,
    jvm_warmup_max_seconds: float = 60  # ... and more, up to this, while its CPU per request still falls
    model_rounds: int = 3    # rounds of the real-model figure


FULL = Profile("full", runs=3, rounds=5, wrk_seconds=3, ping_seconds=4, warm_starts=5, cold_starts=3, sigterm_sleep=1.5,
               relay_mib=1024, relay_runs=7, version_runs=5, restarts=1000, scrapes=5, idle_seconds=2.0)
QUICK = Profile("quick", runs=1, rounds=1, wrk_seconds=1, ping_seconds=1.5, warm_starts=1, cold_starts=1, sigterm_sleep=0.6,
                relay_mib=32, relay_runs=1, version_runs=1, restarts=20, scrapes=1, idle_seconds=0.5, model_mib=50,
                jvm_warmup_seconds=3, jvm_warmup_max_seconds=3, model_rounds=1)


def _invoke_a_few(port: int, count: int = 8) -> None:
    for _ in range(count):
        harness.http_request(port, "POST", "/invocations", b"[[1.0, 2.0, 3.0]]", timeout=30)


def settle(stack: stacks.Stack) -> None:
    """After /ping says 200: every worker up and warm (a few requests went through), so
    memory is measured at rest."""
    if isinstance(stack, stacks.Smsuper):
        stack.wait_workers()
    _invoke_a_few(stack.port)
    time.sleep(0.5)


# ---- 1. /invocations throughput --------------------------------------------------------

def _cpu_of(pids: List[int]) -> float:
    """CPU seconds (user + system) the processes have used so far; a process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            total += harness.cpu_ticks(pid)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


JVM_WARMUP_STEP = 5.0  # seconds of load per step of a JVM's warm-up


def warm_up(stack: stacks.Stack, profile: Profile, log: Callable[[str], None], **request: str) -> None:
    """First requests, lazy imports, nginx's upstream connections. A JVM gets at least
    profile.jvm_warmup_seconds of load, in steps, and more steps (up to
    profile.jvm_warmup_max_seconds) while its CPU per request still falls by more than 5%
    from one step to the next: its JIT compiles the hot path over the first tens of seconds,
    and slower still when the machine is busy."""
    if not stack.jvm:
        harness.wrk(stack.port, "/invocations", 16, 1, **request)
        return
    spent, previous, trail = 0.0, None, []
    while True:
        step = min(JVM_WARMUP_STEP, profile.jvm_warmup_max_seconds - spent)
        cost = measure_round(stack, 16, step, **request)["server_cpu_us_per_request"]
        spent += step
        trail.append(round(cost))
        still_falling = previous is None or cost < 0.95 * previous
        if spent >= profile.jvm_warmup_max_seconds or (spent >= profile.jvm_warmup_seconds and not still_falling):
            break
        previous = cost
    log(f"  {stack.name}: JVM warm-up {spent:g} s, server CPU µs/request per {JVM_WARMUP_STEP:g} s step: {trail}")


def measure_round(stack: stacks.Stack, connections: int, seconds: float, **request: str) -> Dict:
    """One wrk run with the server CPU it cost: user + system time of every process of the
    stack over the run, divided by the requests answered."""
    pids = stack.processes()
    before = _cpu_of(pids)
    result = harness.wrk(stack.port, "/invocations", connections, seconds, **request)
    spent = _cpu_of(pids) - before
    result["server_cpu_us_per_request"] = spent * 1e6 / result["requests"] if result["requests"] else 0.0
    return result


def _per_stack(runs: List[Dict], rows: int = 1) -> Dict:
    figure = {
        "rps": summary([r["rps"] for r in runs], 0),
        "p50_ms": summary([r["p50_ms"] for r in runs], 2),
        "p99_ms": summary([r["p99_ms"] for r in runs], 2),
        "server_cpu_us_per_request": summary([r["server_cpu_us_per_request"] for r in runs], 0),
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }
    if rows != 1:
        figure["rows_per_s"] = summary([r["rps"] * rows for r in runs], 0)
    return figure


def _round_ratios(per_stack: Dict[str, List[Dict]], key: str, mine_names: List[str]) -> Dict:
    """mine/other of `key`, taken within each round, then summarised; for each of mine_names
    against every stack not of smsuper's own variants."""
    ratios: Dict = {}
    for mine_name in mine_names:
        mine = [r[key] for r in per_stack[mine_name]]
        for name, runs in per_stack.items():
            if name != mine_name and not (mine_name != "smsuper" and name.startswith("smsuper")):
                ratios[f"{mine_name}/{name}"] = summary(
                    [m / o[key] if o[key] else 0.0 for m, o in zip(mine, runs)], 3)
    return ratios


def throughput(named: Dict[str, stacks.Stack], profile: Profile, log: Callable[[str], None]) -> Dict:
    """wrk on /invocations of every stack, in rounds: in each round every stack takes its turn
    (in an order rotated from round to round) right after the others, so a change in the
    machine's load hits all of them alike, and the ratios smsuper/baseline are taken within a
    round before their median is. Returns {connections: {stack: figures, "ratios": ...,
    "cpu_ratios": ...}}."""
    for stack in named.values():
        warm_up(stack, profile, log)
    raw: Dict[int, Dict[str, List[Dict]]] = {c: {name: [] for name in named} for c in CONNECTIONS}
    order = list(named)
    for run in range(profile.rounds):
        for connections in CONNECTIONS:
            for name in order[run % len(order):] + order[:run % len(order)]:
                result = measure_round(named[name], connections, profile.wrk_seconds)
                raw[connections][name].append(result)
                log(f"  round {run + 1} c={connections:<3} {name:<16} {result['rps']:9.0f} req/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  "
                    f"server CPU {result['server_cpu_us_per_request']:5.0f} µs/request")
    figures: Dict = {}
    for connections, per_stack in raw.items():
        entry: Dict = {name: _per_stack(runs) for name, runs in per_stack.items()}
        mine_names = [n for n in per_stack if n.startswith("smsuper")]
        entry["ratios"] = _round_ratios(per_stack, "rps", mine_names)
        entry["cpu_ratios"] = _round_ratios(per_stack, "server_cpu_us_per_request", ["smsuper"])
        figures[str(connections)] = entry
    return figures


# ---- 9. a real model: scikit-learn with the default handlers ---------------------------------

MODEL_ROWS = (1, 100)


def real_model(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """A logistic regression on 20 features (apps/make_sklearn_model.py), one model file read by
    all three stacks: smsuper with apps/model_sklearn.py (model_fn, predict_fn; its default
    CSV decoder and encoder), the seed-style stack with apps/seed/predictor_sklearn.py (pandas),
    the official toolkit with the same inference.py and its own default decoder and encoder.
    CSV requests of 1 and of 100 rows, Accept text/csv, 16 and 64 connections, in rounds as in
    figure 1. Before measuring, each stack's answers to both bodies are compared. A diagnostic
    beside it: the CPU time each stack's default CSV decoder and encoder take per body, alone
    (apps/codec_cost.py)."""
    python = ctx.needs_bench_python("the real-model figure")
    base = ctx.smsuper_base("sklearn")
    paths = {rows: base / "bodies" / f"rows-{rows}.csv" for rows in MODEL_ROWS}
    bodies = {rows: path.read_text() for rows, path in paths.items()}
    proc = subprocess.run([python, str(stacks.APPS / "codec_cost.py"), str(ctx.pyz)] + [str(p) for p in paths.values()],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    if proc.returncode == 0:
        codec_cost = {int(name.split("-")[1].split(".")[0]): costs
                      for name, costs in json.loads(proc.stdout.decode()).items()}
    else:
        codec_cost = {"error": proc.stderr.decode(errors="replace")[-300:]}
    log(f"  default CSV codecs alone, µs per body: {codec_cost}")
    request = {"content_type": "text/csv", "accept": "text/csv"}
    running: List[stacks.Stack] = []
    try:
        named: Dict[str, stacks.Stack] = {}
        for stack in (stacks.Smsuper(ctx, model="sklearn", python=python),
                      stacks.Seed(ctx, model="sklearn", python=python),
                      stacks.Toolkit(ctx, model="sklearn")):
            running.append(stack.start())
            named[stack.name] = stack
        for stack in running:
            stack.wait_ready(120)
        answers: Dict[str, Dict[int, str]] = {}
        for name, stack in named.items():
            answers[name] = {}
            for rows, body in bodies.items():
                status, answer = harness.http_request(stack.port, "POST", "/invocations", body.encode(), timeout=60,
                                                      **request)
                if status != 200:
                    raise BenchError(f"{name} answered {status} to a {rows}-row CSV request: {answer[:300]!r}")
                answers[name][rows] = answer.decode(errors="replace")
        reference = answers["smsuper"]
        agree = {name: all(a[rows].split() == reference[rows].split() for rows in MODEL_ROWS)
                 for name, a in answers.items()}
        log(f"  predictions agree with smsuper's: {agree}")
        for stack in running:
            warm_up(stack, profile, log, body=bodies[1], **request)
        raw = {(rows, c): {name: [] for name in named} for rows in MODEL_ROWS for c in CONNECTIONS}
        order = list(named)
        for run in range(profile.model_rounds):
            for rows in MODEL_ROWS:
                for connections in CONNECTIONS:
                    for name in order[run % len(order):] + order[:run % len(order)]:
                        result = measure_round(named[name], connections, profile.wrk_seconds, body=bodies[rows],
                                               **request)
                        raw[(rows, connections)][name].append(result)
                        log(f"  round {run + 1} rows={rows:<3} c={connections:<3} {name:<16} {result['rps']:8.0f} "
                            f"req/s {result['rps'] * rows:9.0f} rows/s  p50 {result['p50_ms']:6.2f} ms  "
                            f"p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  "
                            f"server CPU {result['server_cpu_us_per_request']:5.0f} µs/request")
    finally:
        for stack in running:
            stack.stop()
    figures: Dict = {"model": "scikit-learn LogisticRegression, 20 features, joblib", "predictions_agree": agree,
                     "codec_cost_us": codec_cost, "cases": {}}
    for (rows, connections), per_stack in raw.items():
        entry: Dict = {name: _per_stack(runs, rows) for name, runs in per_stack.items()}
        entry["ratios"] = _round_ratios(per_stack, "rps", ["smsuper"])
        peers = [n for n in per_stack if n != "smsuper"]
        entry["ratios"]["smsuper/best peer"] = summary(
            [mine["rps"] / max(per_stack[n][i]["rps"] for n in peers) if max(per_stack[n][i]["rps"] for n in peers)
             else 0.0 for i, mine in enumerate(per_stack["smsuper"])], 3)
        entry["cpu_ratios"] = _round_ratios(per_stack, "server_cpu_us_per_request", ["smsuper"])
        label = f"{rows} row{'s' if rows != 1 else ''}, {connections} conns"
        figures["cases"][label] = {"rows": rows, "connections": connections, **entry}
    return figures


# ---- 2. /ping while every worker is busy --------------------------------------------------

def ping_series(port: int, seconds: float, max_pings: int = 400, interval: float = 0.02,
                timeout: float = 5.0) -> Dict:
    """Sequential GET /ping, each on a new connection, like a health checker."""
    latencies: List[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(latencies) < max_pings:
        began = time.perf_counter()
        try:
            status = harness.http_request(port, "GET", "/ping", timeout=timeout)[0]
        except (OSError, BenchError):
            status = None
        latencies.append((time.perf_counter() - began) * 1000)
        if status != 200:
            failures += 1
        time.sleep(interval)
    return {"pings": len(latencies), "failures": failures, "p50_ms": harness.percentile(latencies, 0.50),
            "p99_ms": harness.percentile(latencies, 0.99), "max_ms": max(latencies),
            "over_2s": sum(1 for v in latencies if v > 2000)}


def ping_while_busy(named: Dict[str, stacks.Stack], profile: Profile, log: Callable[[str], None]) -> Dict:
    """Twice as many clients as workers post 1 s predictions; meanwhile /ping is timed."""
    busy_clients = 2 * stacks.WORKERS
    figures: Dict = {}
    for name, stack in named.items():
        runs = []
        for run in range(profile.runs):
            load = harness.spawn_wrk(stack.port, "/invocations", busy_clients, profile.ping_seconds + 2.5,
                                     body='{"sleep": 1}', timeout=30)
            try:
                time.sleep(1.2)  # every worker has a prediction by now
                series = ping_series(stack.port, profile.ping_seconds)
            finally:
                busy = harness.finish_wrk(load, 60)
            series["predictions_done"] = busy["requests"]
            runs.append(series)
            log(f"  run {run + 1} {name:<11} {series['pings']} pings  p50 {series['p50_ms']:7.1f} ms  "
                f"p99 {series['p99_ms']:7.1f} ms  max {series['max_ms']:7.1f} ms  over 2 s: {series['over_2s']}  "
                f"failed: {series['failures']}  (1 s predictions done meanwhile: {busy['requests']})")
            time.sleep(1.1)  # let the last predictions finish before the next run
        figures[name] = {
            "p50_ms": summary([r["p50_ms"] for r in runs], 1),
            "p99_ms": summary([r["p99_ms"] for r in runs], 1),
            "max_ms": round(max(r["max_ms"] for r in runs), 1),
            "over_2s": sum(r["over_2s"] for r in runs),
            "failures": sum(r["failures"] for r in runs),
            "pings": sum(r["pings"] for r in runs),
            "predictions_done": sum(r["predictions_done"] for r in runs),
            "busy_clients": busy_clients,
        }
    return figures


# ---- 3 and 4a. start to first /ping 200, memory at rest --------------------------------------

def _idle_activity(pid: int, seconds: float) -> Dict[str, float]:
    """PID 1's wake-ups (context switches) and CPU per second while nothing happens."""
    ticks = os.sysconf("SC_CLK_TCK")
    switches, cpu = harness.context_switches(pid), harness.cpu_ticks(pid)
    time.sleep(seconds)
    return {"wakeups_per_s": round((harness.context_switches(pid) - switches) / seconds, 1),
            "cpu_ms_per_s": round((harness.cpu_ticks(pid) - cpu) * 1000 / ticks / seconds, 2)}


def start_and_memory(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """Each stack started again and again: seconds to the first /ping 200, then its memory at rest.

    smsuper warm: the pyz's cache already holds this build (every start after the first).
    smsuper cold: a new, empty cache directory, so the first start extracts and compiles.
    The time to the first /invocations 200 is taken too: the official toolkit's /ping
    answers 200 before its workers have loaded the model.
    """
    results: Dict = {}
    kinds = [("smsuper", profile.warm_starts, lambda: stacks.Smsuper(ctx)),
             ("smsuper-cold", profile.cold_starts,
              lambda: stacks.Smsuper(ctx, cache_dir=Path(os_mkdtemp(ctx.workdir, "cold-cache-")))),
             ("bare-gunicorn", profile.warm_starts, lambda: stacks.Bare(ctx)),
             ("seed-style", profile.warm_starts, lambda: stacks.Seed(ctx)),
             ("official-toolkit", profile.warm_starts, lambda: stacks.Toolkit(ctx))]
    for name, count, make in kinds:
        seconds: List[float] = []
        invoked: List[float] = []
        memory: List[Dict] = []
        if name == "official-toolkit" and not ctx.bench_python:
            results[name] = {"error": "the benchmark's venv is missing (bash scripts/install-bench-deps.sh)"}
            continue
        for run in range(max(count, 1)):
            stack = make().start()
            try:
                ready = stack.wait_ready(120)
                seconds.append(ready - stack.started_at)
                invoked.append(_first_invocation(stack) - stack.started_at)
                settle(stack)
                if name == "smsuper-cold":  # PID 1 did the extraction itself: its heap may keep the cost
                    memory.append({"pid1_rss_mib": round(harness.status_kb(stack.root_pid(), "VmRSS") / 1024, 1)})
                    continue
                sample = stacks.stack_memory(stack.processes())
                if name == "smsuper":
                    roles = stack.roles()
                    init = roles["init"][0]
                    sample["pid1_rss_mib"] = round(harness.status_kb(init, "VmRSS") / 1024, 1)
                    sample["pid1_uss_mib"] = round(harness.smaps_rollup(init)["Uss"] / 1024, 1)
                    sample["by_role_pss_mib"] = {role: stacks.stack_memory(pids)["pss_mib"]
                                                 for role, pids in roles.items() if pids}
                    sample.update(_idle_activity(init, profile.idle_seconds))
                memory.append(sample)
            finally:
                stack.stop()
        log(f"  {name:<16} start to first /ping 200: " + ", ".join(f"{s * 1000:.0f} ms" for s in seconds)
            + "; to first /invocations 200: " + ", ".join(f"{s * 1000:.0f} ms" for s in invoked))
        results[name] = {"start_s": summary(seconds, 3), "first_invocation_s": summary(invoked, 3)}
        if memory:
            keys = [k for k in memory[0] if isinstance(memory[0][k], (int, float))]
            results[name]["memory"] = {k: summary([m[k] for m in memory], 1) for k in keys}
            if "by_role_pss_mib" in memory[0]:
                results[name]["memory"]["by_role_pss_mib"] = memory[-1]["by_role_pss_mib"]
    return results


def _first_invocation(stack: stacks.Stack, limit: float = 120.0) -> float:
    """Post the trivial model's request until it answers 200; the monotonic time it did."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if harness.http_request(stack.port, "POST", "/invocations", b"[[1.0, 2.0, 3.0]]", timeout=30)[0] == 200:
                return time.monotonic()
        except (OSError, BenchError):
            pass
        time.sleep(0.005)
    raise BenchError(f"{stack.name}: /invocations did not answer 200 within {limit:g} s")


def os_mkdtemp(parent: Path, prefix: str) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix, dir=str(parent))
    os.chmod(path, 0o755)
    return path


# ---- 4b. a 200 MB model with and without preloading ---------------------------------------------

def model_memory(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """gunicorn's memory (master + workers) with a model holding profile.model_mib MiB, with and
    without SMSUPER_PRELOAD_MODEL, and with the trivial model (what gunicorn costs without a model).

    workers' USS: memory only the workers hold (with preload the model's pages are shared with
    the master, so they are nobody's unique memory). Model copies: (gunicorn's PSS - its PSS with
    the trivial model) / model size, i.e. how many copies of the model are resident in all.
    """
    results: Dict = {"model_mib": profile.model_mib, "workers": stacks.WORKERS}
    configurations = (("trivial", "trivial", None, "false"), ("preload", "big", profile.model_mib, "true"),
                      ("no_preload", "big", profile.model_mib, "false"))
    for label, model, mib, preload in configurations:
        runs = []
        for _ in range(profile.runs):
            stack = stacks.Smsuper(ctx, model=model, model_mib=mib, SMSUPER_PRELOAD_MODEL=preload)
            stack.start()
            try:
                stack.wait_ready(120)
                stack.wait_workers()
                _invoke_a_few(stack.port, 6)
                time.sleep(0.5)
                roles = stack.roles()
                workers = roles["gunicorn_workers"]
                worker_uss = [harness.smaps_rollup(pid)["Uss"] / 1024 for pid in workers]
                gunicorn = stacks.stack_memory(roles["gunicorn_master"] + workers)
                runs.append({"workers_uss_mib": sum(worker_uss), "gunicorn_pss_mib": gunicorn["pss_mib"],
                             "gunicorn_rss_mib": gunicorn["rss_mib"],
                             "per_worker_uss_mib": [round(v, 1) for v in worker_uss],
                             "master_uss_mib": round(sum(harness.smaps_rollup(pid)["Uss"]
                                                         for pid in roles["gunicorn_master"]) / 1024, 1)})
            finally:
                stack.stop()
        results[label] = {
            "workers_uss_mib": summary([r["workers_uss_mib"] for r in runs], 1),
            "gunicorn_pss_mib": summary([r["gunicorn_pss_mib"] for r in runs], 1),
            "gunicorn_rss_mib": summary([r["gunicorn_rss_mib"] for r in runs], 1),
            "master_uss_mib": summary([r["master_uss_mib"] for r in runs], 1),
            "per_worker_uss_mib": runs[-1]["per_worker_uss_mib"],
        }
        if label != "trivial":
            overhead = results["trivial"]["gunicorn_pss_mib"]["median"]
            results[label]["model_copies"] = summary(
                [(r["gunicorn_pss_mib"] - overhead) / profile.model_mib for r in runs], 2)
            results[label]["workers_uss_copies"] = summary(
                [r["workers_uss_mib"] / profile.model_mib for r in runs], 2)
        log(f"  {label:<10} gunicorn PSS {results[label]['gunicorn_pss_mib']['median']} MiB"
            + (f" = {results[label]['model_copies']['median']} model copies" if label != "trivial" else "")
            + f"; workers' USS {results[label]['workers_uss_mib']['median']} MiB, per worker "
              f"{runs[-1]['per_worker_uss_mib']}, master USS {results[label]['master_uss_mib']['median']} MiB")
    return results


# ---- 5. SIGTERM with 4 slow requests in flight ----------------------------------------------------

def _sigterm_once(stack: stacks.Stack, sleep: float) -> Dict:
    stack.start()
    try:
        stack.wait_ready(60)
        if isinstance(stack, stacks.Smsuper):
            stack.wait_workers()
        init = stack.root_pid()
        namespace = harness.pid_namespace(init)
        outcomes: List[Optional[Dict]] = [None] * 4
        body = json.dumps({"sleep": sleep}).encode()

        def client(index: int) -> None:
            try:
                status = harness.http_request(stack.port, "POST", "/invocations", body, timeout=sleep * 4 + 30)[0]
            except BenchError:
                status = "no answer"  # the connection closed without an HTTP response
            except OSError as error:
                status = type(error).__name__
            outcomes[index] = {"status": status, "done": time.monotonic()}

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(min(0.4, sleep / 2))  # two requests in the workers, two queued behind them
        tree = [(pid, harness.start_time(pid)) for pid in harness.namespace_members(namespace)]
        term = time.monotonic()
        os.kill(init, signal.SIGTERM)

        def all_gone() -> bool:
            return stack.proc.poll() is not None and not any(harness.alive(p, s) for p, s in tree)

        harness.wait_until(all_gone, 60 + 4 * sleep, "every process of the stack to exit", interval=0.002)
        gone = time.monotonic()
        for thread in threads:
            thread.join(30)
        leftover = harness.namespace_members(namespace)
        completed = [o for o in outcomes if o and o["status"] == 200]
        last = max(o["done"] for o in outcomes if o)
        last_ok = max((o["done"] for o in completed), default=None)
        return {"completed": len(completed), "statuses": [o["status"] if o else None for o in outcomes],
                "gone_after_last_completed_ms": round((gone - last_ok) * 1000, 1) if last_ok else None,
                "gone_after_last_answer_ms": round((gone - last) * 1000, 1),
                "gone_after_sigterm_ms": round((gone - term) * 1000, 1),
                "exit_code": stack.proc.returncode, "leftover": len(leftover)}
    finally:
        stack.stop()


def sigterm(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """Each stack as PID 1 of its own PID namespace (as in a container) gets SIGTERM while 4
    requests of profile.sigterm_sleep s each are in flight (2 in the workers, 2 queued)."""
    results: Dict = {"request_seconds": profile.sigterm_sleep}
    for name, make in (("smsuper", lambda: stacks.Smsuper(ctx, namespace=True)),
                       ("seed-style", lambda: stacks.Seed(ctx, namespace=True))):
        runs = [_sigterm_once(make(), profile.sigterm_sleep) for _ in range(profile.runs)]
        for run in runs:
            log(f"  {name:<11} completed {run['completed']}/4 {run['statuses']}, all processes gone "
                f"{run['gone_after_last_answer_ms']} ms after the last answer "
                f"({run['gone_after_sigterm_ms']} ms after SIGTERM), exit code {run['exit_code']}")
        after = [r["gone_after_last_completed_ms"] for r in runs if r["gone_after_last_completed_ms"] is not None]
        results[name] = {
            "completed": summary([r["completed"] for r in runs], 0),
            "all_completed_every_run": all(r["completed"] == 4 for r in runs),
            "gone_after_last_completed_ms": summary(after, 1),
            "gone_after_last_answer_ms": summary([r["gone_after_last_answer_ms"] for r in runs], 1),
            "gone_after_sigterm_ms": summary([r["gone_after_sigterm_ms"] for r in runs], 1),
            "statuses": [r["statuses"] for r in runs],
            "exit_codes": [r["exit_code"] for r in runs],
            "leftover_processes": sum(r["leftover"] for r in runs),
        }
    return results


# ---- 6. training log relay against cat ----------------------------------------------------------

def _relay_layout(ctx: stacks.Context, mib: int) -> Path:
    base = ctx.workdir / "ml-relay"
    if not base.exists():
        (base / "code").mkdir(parents=True)
        (base / "input" / "config").mkdir(parents=True)
        (base / "code" / "log_writer.py").write_bytes((stacks.APPS / "log_writer.py").read_bytes())
        (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"mib": str(mib)}))
        for root, dirs, files in os.walk(base):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
    return base


def _consume(read_fd: int) -> Tuple[int, float]:
    """Read to EOF; return (bytes, seconds from the first byte to EOF)."""
    total = 0
    first = None
    while True:
        data = os.read(read_fd, MIB)
        if not data:
            break
        if first is None:
            first = time.perf_counter()
        total += len(data)
    return total, (time.perf_counter() - first) if first is not None else 0.0


def _own_cpu_at_exit(proc: subprocess.Popen, limit: float = 120.0) -> float:
    """CPU seconds (user + system) of the process itself, not of its children, read from
    /proc while it is a zombie (exited, not yet reaped); then reaps it."""
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    cpu = float("nan")
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            break
        if fields[0] == "Z":
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            break
        time.sleep(0.005)
    proc.wait(timeout=limit)
    return cpu


def _relay_once(ctx: stacks.Context, kind: str, mib: int) -> Dict:
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, 1031, MIB)  # F_SETPIPE_SZ: the consumer's pipe is 1 MiB for both
    except OSError:
        pass
    writer_argv = [ctx.python, str(stacks.APPS / "log_writer.py"), "--mib", str(mib)]
    procs: List[subprocess.Popen] = []
    _, err_path = ctx.log_paths(f"relay-{kind}")
    with open(err_path, "wb") as err:
        if kind == "cat":
            # The writer's pipe gets the 1 MiB that smsuper gives its children's pipes (init/relay.py),
            # so cat is not held back by a 64 KiB pipe: only the relaying process differs.
            cat_in, writer_out = os.pipe()
            try:
                fcntl.fcntl(writer_out, 1031, MIB)
            except OSError:
                pass
            writer = subprocess.Popen(writer_argv, stdout=writer_out, stdin=subprocess.DEVNULL, stderr=err)
            procs = [writer, subprocess.Popen(["cat"], stdin=cat_in, stdout=write_fd, stderr=err)]
            os.close(writer_out)
            os.close(cat_in)
        else:
            env = ctx.clean_env()
            env.update({"SMSUPER_ALLOW_PRIVILEGED": "1", "SMSUPER_CACHE_DIR": str(ctx.cache_dir),
                        "SMSUPER_USER": ctx.workload_user,
                        "SAGEMAKER_BASE_DIR": str(_relay_layout(ctx, mib)), "SAGEMAKER_PROGRAM": "log_writer.py",
                        "SMSUPER_METRICS_PORT": "0"})
            procs = [subprocess.Popen([ctx.python, str(ctx.pyz), "train"], env=env, stdin=subprocess.DEVNULL,
                                      stdout=write_fd, stderr=err, cwd=str(ctx.workdir))]
    os.close(write_fd)
    try:
        total, seconds = _consume(read_fd)
    finally:
        os.close(read_fd)
    relayer = procs[-1]  # cat, or smsuper's PID 1
    relayer_cpu = _own_cpu_at_exit(relayer)
    codes = [p.wait(timeout=120) for p in procs]
    if any(codes) or total != mib * MIB:
        raise BenchError(f"relay through {kind}: exit codes {codes}, {total} of {mib * MIB} bytes; "
                         f"{err_path.read_bytes()[-600:].decode(errors='replace')}")
    return {"mib_per_s": mib / seconds, "seconds": seconds, "relayer_cpu_s_per_gib": relayer_cpu * 1024 / mib}


def log_relay(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """A writer pours profile.relay_mib MiB of 100-byte lines through `smsuper train` (which relays
    the script's stdout line-atomically) or through `cat` into a pipe the benchmark reads. The
    two take turns, profile.relay_runs times; the ratio is taken per pair, then its median.
    The relaying process's own CPU time per GiB is shown too (for smsuper: all of PID 1's, its
    start-up and the job's setup included)."""
    samples: Dict[str, List[Dict]] = {"smsuper": [], "cat": []}
    for run in range(profile.relay_runs):
        for kind in (("cat", "smsuper") if run % 2 == 0 else ("smsuper", "cat")):
            result = _relay_once(ctx, kind, profile.relay_mib)
            samples[kind].append(result)
            log(f"  run {run + 1} {kind:<8} {result['mib_per_s']:8.0f} MiB/s, relaying process's CPU "
                f"{result['relayer_cpu_s_per_gib']:.2f} s/GiB")
    return {"mib": profile.relay_mib, "line_bytes": 100,
            "smsuper_mib_per_s": summary([r["mib_per_s"] for r in samples["smsuper"]], 0),
            "cat_mib_per_s": summary([r["mib_per_s"] for r in samples["cat"]], 0),
            "smsuper_cpu_s_per_gib": summary([r["relayer_cpu_s_per_gib"] for r in samples["smsuper"]], 2),
            "cat_cpu_s_per_gib": summary([r["relayer_cpu_s_per_gib"] for r in samples["cat"]], 2),
            "ratio": summary([s["mib_per_s"] / c["mib_per_s"] for s, c in zip(samples["smsuper"], samples["cat"])], 3)}


# ---- 7. --version per CPython, pyz size ------------------------------------------------------------

def version_start(ctx: stacks.Context, pythons: Dict[str, str], profile: Profile,
                  log: Callable[[str], None]) -> Dict:
    """`python smsuper.pyz --version` with a warm cache, per CPython; the interpreter's own start beside it."""
    results: Dict = {"pyz_bytes": ctx.pyz.stat().st_size, "pythons": {}}
    cache = Path(os_mkdtemp(ctx.workdir, "version-cache-"))
    for version, python in pythons.items():
        env = ctx.clean_env()
        env["SMSUPER_CACHE_DIR"] = str(cache)
        argv = [python, str(ctx.pyz), "--version"]
        try:
            cold = harness.timed_run(argv, env)
            warm = [harness.timed_run(argv, env) for _ in range(max(profile.version_runs, 1))]
            bare = [harness.timed_run([python, "-c", "pass"], env) for _ in range(max(profile.version_runs, 1))]
        except (BenchError, subprocess.TimeoutExpired, OSError) as error:
            results["pythons"][version] = {"error": str(error)}
            log(f"  {version}: {error}")
            continue
        results["pythons"][version] = {"warm_s": summary(warm, 4), "cold_s": round(cold, 3),
                                       "python_alone_s": summary(bare, 4)}
        log(f"  {version:<8} --version warm {summary(warm, 4)['median'] * 1000:6.1f} ms "
            f"(python -c pass {summary(bare, 4)['median'] * 1000:5.1f} ms), first start {cold * 1000:6.0f} ms")
    return results


# ---- 8. metrics scrape after worker restarts ------------------------------------------------------

def _scrape(port: int) -> Tuple[float, int, int]:
    began = time.perf_counter()
    status, body = harness.http_request(port, "GET", "/metrics", timeout=30)
    return time.perf_counter() - began, status, len(body)


def _restarts_reported(port: int) -> Optional[float]:
    """smsuper_worker_restarts_total as the endpoint reports it (None when absent)."""
    body = harness.http_request(port, "GET", "/metrics", timeout=30)[1].decode(errors="replace")
    match = re.search(r"^smsuper_worker_restarts_total(?:\{[^}]*\})? ([0-9.eE+]+)$", body, re.M)
    return float(match.group(1)) if match else None


def metrics_scrape(ctx: stacks.Context, profile: Profile, log: Callable[[str], None]) -> Dict:
    """SMSUPER_MAX_REQUESTS=1: every request retires its worker. After profile.restarts of them,
    time GET /metrics on PID 1's metrics port."""
    stack = stacks.Smsuper(ctx, model="pid", SMSUPER_MAX_REQUESTS="1")
    stack.start()
    try:
        stack.wait_ready(60)
        stack.wait_workers()
        try:
            _, status, size = _scrape(stack.metrics_port)
        except (OSError, BenchError) as error:
            status, size = None, 0
            reason = f"nothing answers on SMSUPER_METRICS_PORT ({type(error).__name__}: {error})"
        else:
            reason = f"GET /metrics answered {status}"
        if status != 200:
            log(f"  not available: {reason}")
            return {"available": False, "reason": reason}
        before = [_scrape(stack.metrics_port)[0] for _ in range(max(profile.scrapes, 1))]
        served: List[int] = []
        errors: List[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 480

        def client() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if len(served) + len(errors) >= profile.restarts:
                        return
                try:
                    status_, body = harness.http_request(stack.port, "POST", "/invocations", b"[0]", timeout=30)
                    ok = status_ == 200
                except (OSError, BenchError) as error:
                    ok, body, status_ = False, b"", type(error).__name__
                with lock:
                    if ok:
                        served.append(json.loads(body)["pid"])
                    else:
                        errors.append(str(status_))

        began = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(stacks.WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(500)
        elapsed = time.monotonic() - began
        time.sleep(1.0)
        after = [_scrape(stack.metrics_port) for _ in range(max(profile.scrapes, 1))]
        result = {
            "available": True,
            "restarts": len(served), "distinct_worker_pids": len(set(served)), "request_errors": len(errors),
            "restart_seconds": round(elapsed, 1),
            "scrape_ms_before": summary([t * 1000 for t in before], 1),
            "scrape_ms": summary([t * 1000 for t, _, _ in after], 1),
            "scrape_bytes": after[-1][2],
            "restarts_reported": _restarts_reported(stack.metrics_port),
            "pid1_rss_mib_after": round(harness.status_kb(stack.root_pid(), "VmRSS") / 1024, 1),
        }
        log(f"  {len(served)} requests = restarts in {elapsed:.1f} s ({len(errors)} errors), "
            f"smsuper_worker_restarts_total {result['restarts_reported']}; scrape "
            f"{result['scrape_ms']['median']} ms, {after[-1][2]} bytes (before: {result['scrape_ms_before']['median']} ms)")
        return result
    finally:
        stack.stop()
