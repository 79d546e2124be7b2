"""The benchmark's tools: statistics, /proc readings, HTTP probes and wrk.

Everything here talks to 127.0.0.1 only and every wait has a limit, so a
broken stack makes the benchmark report an error instead of hanging.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
WRK = "/usr/bin/wrk"
WRK_SCRIPT = HERE / "wrk_json.lua"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


# ---- statistics ------------------------------------------------------------------

def summary(values: Sequence[float], digits: int = 3) -> Dict[str, object]:
    """Median of the runs, with their spread (min, max) and every run kept."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the value below which `fraction` of the samples lie."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, int(-(-fraction * len(ordered) // 1)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


# ---- machine ---------------------------------------------------------------------------

def cpu_busy_fraction(interval: float = 1.0) -> float:
    """Share of all CPUs busy over `interval` seconds (from /proc/stat)."""

    def sample() -> List[int]:
        with open("/proc/stat") as handle:
            return [int(x) for x in handle.readline().split()[1:]]

    first = sample()
    time.sleep(interval)
    second = sample()
    delta = [b - a for a, b in zip(first, second)]
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    total = sum(delta) or 1
    return round(1 - idle / total, 3)


def machine_load(interval: float = 1.0) -> Dict[str, object]:
    ncpu = len(os.sched_getaffinity(0))
    load1, load5, load15 = os.getloadavg()
    busy = cpu_busy_fraction(interval)
    return {"loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)], "cpus": ncpu,
            "cpu_busy_fraction": busy, "high": load1 > 0.5 * ncpu or busy > 0.25}


# ---- /proc -------------------------------------------------------------------------------

def children(pid: int) -> List[int]:
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> List[int]:
    """pid's children, grandchildren, ... (not pid itself)."""
    result: List[int] = []
    todo = children(pid)
    while todo:
        current = todo.pop()
        result.append(current)
        todo += children(current)
    return result


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def start_time(pid: int) -> Optional[int]:
    """Clock ticks since boot at which pid started: tells a pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: Optional[int]) -> bool:
    """True while the very process (pid, start time) exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def smaps_rollup(pid: int) -> Dict[str, int]:
    """kB figures of /proc/PID/smaps_rollup, plus Uss = Private_Clean + Private_Dirty."""
    values: Dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                values[parts[0][:-1]] = int(parts[1])
    values["Uss"] = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def context_switches(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def namespace_members(namespace: str) -> List[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace and alive(int(entry), None):
                    members.append(int(entry))
            except OSError:
                pass
    return members


# ---- processes ---------------------------------------------------------------------------

def wait_until(check, limit: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"gave up after {limit:g} s waiting for {what}")


def kill_tree(root: int, root_popen: Optional[subprocess.Popen] = None, grace: float = 10.0) -> None:
    """SIGTERM root, then SIGKILL whatever of its tree (as seen now) is left after `grace`."""
    tree = [(pid, start_time(pid)) for pid in [root] + descendants(root)]
    try:
        os.kill(root, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if root_popen is not None:
            root_popen.poll()
        if not any(alive(pid, started) for pid, started in tree):
            break
        time.sleep(0.02)
    for pid, started in tree:
        if alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if root_popen is not None:
        try:
            root_popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# ---- HTTP ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_below(limit: int, low: int = 10000) -> int:
    """A free port in [low, limit): for servers that refuse the kernel's ephemeral range
    (multi-model-server takes only ports below 32767)."""
    for _ in range(200):
        port = random.randrange(low, limit)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free port between {low} and {limit}")


def http_request(port: int, method: str, path: str, body: bytes = b"", timeout: float = 5.0,
                 content_type: str = "application/json", accept: str = "") -> Tuple[int, bytes]:
    """One request on a new connection (HTTP/1.0 semantics: the server closes). Returns (status, body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if method != "GET" or body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    data = head.encode() + b"\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(data)
        raw = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            raw += chunk
            if _complete(raw):  # multi-model-server keeps the connection open despite "close"
                break
    if not raw.startswith(b"HTTP/"):
        raise BenchError(f"not an HTTP answer: {raw[:80]!r}")
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""


def _complete(raw: bytes) -> bool:
    """True when raw holds a whole response with a Content-Length (without one: read to EOF)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(rest) >= int(value)
    return False


def try_status(port: int, path: str = "/ping", timeout: float = 2.0) -> Optional[int]:
    try:
        return http_request(port, "GET", path, timeout=timeout)[0]
    except (OSError, BenchError):
        return None


def wait_http_200(port: int, limit: float, path: str = "/ping", proc: Optional[subprocess.Popen] = None,
                  interval: float = 0.005) -> float:
    """Poll until GET path answers 200; return the monotonic time it did."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if try_status(port, path, timeout=1.0) == 200:
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the server exited with code {proc.returncode} before {path} answered 200")
        time.sleep(interval)
    raise BenchError(f"{path} on port {port} did not answer 200 within {limit:g} s")


# ---- wrk ---------------------------------------------------------------------------------------

def wrk(port: int, path: str, connections: int, duration: float, body: str = "[[1.0, 2.0, 3.0]]",
        method: str = "POST", threads: int = 2, timeout: float = 10.0, content_type: str = "application/json",
        accept: str = "", paths: Sequence[str] = ()) -> Dict[str, object]:
    """One wrk run; returns requests/s, latency percentiles (ms) and error counts. With `paths`,
    the requests take those paths in turn instead of `path` (wrk_json.lua's BENCH_PATHS)."""
    env = dict(os.environ, BENCH_METHOD=method, BENCH_BODY=body, BENCH_CONTENT_TYPE=content_type,
               BENCH_ACCEPT=accept, BENCH_PATHS=" ".join(paths))
    command = [WRK, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration))}s",
               f"--timeout", f"{timeout:g}s", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{path}"]
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=duration + timeout + 30)
    out = proc.stdout.decode(errors="replace")
    line = next((l for l in out.splitlines() if l.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {out.strip()[-400:]}")
    raw = json.loads(line[len("BENCHJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["p50"] / 1000, "p90_ms": raw["p90"] / 1000, "p99_ms": raw["p99"] / 1000,
        "max_ms": raw["max"] / 1000,
        "errors": errors,
        "error_detail": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
    }


def spawn_wrk(port: int, path: str, connections: int, duration: float, body: str, method: str = "POST",
              timeout: float = 10.0, threads: int = 1) -> subprocess.Popen:
    """wrk in the background (for load while something else is measured); read it with finish_wrk."""
    env = dict(os.environ, BENCH_METHOD=method, BENCH_BODY=body)
    command = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout",
               f"{timeout:g}s", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{path}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_wrk(proc: subprocess.Popen, limit: float) -> Dict[str, object]:
    out = proc.communicate(timeout=limit)[0].decode(errors="replace")
    line = next((l for l in out.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise BenchError(f"background wrk failed: {out.strip()[-400:]}")
    raw = json.loads(line[len("BENCHJSON "):])
    return {"requests": raw["requests"], "errors": raw["connect"] + raw["read"] + raw["write"] + raw["status"]
            + raw["timeout"], "p50_ms": raw["p50"] / 1000, "max_ms": raw["max"] / 1000}


def timed_run(argv: Iterable[str], env: Optional[dict] = None, limit: float = 60.0) -> float:
    """Wall seconds of one command run to completion; raises when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=limit)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")
    return elapsed
