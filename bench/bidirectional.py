#!/usr/bin/env python3
"""WebSocket round trips through smsuper's bidirectional streams vs a bare wsproto server on TCP.

`python3 bench/bidirectional.py [--pyz dist/smsuper.pyz] [--seconds 5] [--rounds 3]`

Both servers echo each message, and both speak WebSocket with the very same wsproto and h11:
the bare server imports them from the pyz itself. The stacks:

  smsuper   `smsuper.pyz serve` under its own PID namespace: nginx, 2 gunicorn workers, a
            stream_fn that yields each message back (handlers.stream_fn, worker/websocket.py)
  bare      one Python process on TCP, a thread per connection running wsproto's server
            side and echoing, nothing in front (the least a WebSocket server can do)

The client is the `websockets` library's sync client, one process per connection (so the
client's GIL is not the limit), 64-byte text messages, one in flight per connection:

  round trip p50 / p99   1 connection, the time from send to the echo's arrival
  messages per second    4 connections together, echoes received per second

Each figure is the median of --rounds rounds; the stacks alternate within a round, so a change
of load hits both alike. The figures go to stdout and to bench/results/bidirectional.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = "x" * 64
CONNECTIONS = 4

STREAM_MODEL = """
def model_fn(model_dir):
    return None

def stream_fn(model, messages):
    for message in messages:
        yield message
"""

# The bare baseline: wsproto's server side, a thread per connection, echoing. sys.argv: pyz, port.
BARE_SERVER = r"""
import socket, sys, threading
sys.path.insert(0, sys.argv[1])  # wsproto and h11 from the pyz: the same library smsuper runs
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

def serve(sock):
    ws = WSConnection(ConnectionType.SERVER)
    parts = []
    with sock:
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Request):
                    sock.sendall(ws.send(AcceptConnection()))
                elif isinstance(event, Message):
                    parts.append(event.data)
                    if event.message_finished:
                        kind = type(event)
                        data_out = "".join(parts) if kind is TextMessage else b"".join(parts)
                        parts = []
                        sock.sendall(ws.send(kind(data=data_out)))
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        sock.sendall(ws.send(event.response()))
                    except Exception:
                        pass
                    return
            if not data:
                return

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[2])))
listener.listen(256)
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_open(url: str, limit: float = 60.0) -> None:
    from websockets.sync.client import connect

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with connect(url, proxy=None, ping_interval=None, open_timeout=5) as ws:
                ws.send("ready?")
                ws.recv(timeout=5)
                return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not open within {limit} s")


def client(url: str, seconds: float, out: "multiprocessing.Queue") -> None:
    """One connection: round trips for `seconds`; puts the latencies (seconds) on `out`."""
    from websockets.sync.client import connect

    latencies: List[float] = []
    with connect(url, proxy=None, ping_interval=None, compression=None, open_timeout=30) as ws:
        for _ in range(50):  # warm up
            ws.send(MESSAGE)
            ws.recv(timeout=30)
        clock = time.perf_counter
        end = clock() + seconds
        while True:
            began = clock()
            if began >= end:
                break
            ws.send(MESSAGE)
            if ws.recv(timeout=30) != MESSAGE:
                raise SystemExit("bench: the echo differs from the message")
            latencies.append(clock() - began)
    out.put(latencies)


def measure(url: str, connections: int, seconds: float) -> Dict[str, float]:
    out: "multiprocessing.Queue" = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(url, seconds, out)) for _ in range(connections)]
    for proc in procs:
        proc.start()
    everything: List[float] = []
    for _ in procs:
        everything += out.get(timeout=seconds + 120)
    for proc in procs:
        proc.join(30)
    everything.sort()
    return {"messages_per_s": len(everything) / seconds,
            "p50_ms": everything[len(everything) // 2] * 1e3,
            "p99_ms": everything[min(len(everything) - 1, int(len(everything) * 0.99))] * 1e3}


class Smsuper:
    name = "smsuper"

    def __init__(self, pyz: Path, work: Path):
        self.port = free_port()
        base = work / "ml"
        (base / "model" / "code").mkdir(parents=True)
        (base / "model" / "code" / "inference.py").write_text(textwrap.dedent(STREAM_MODEL))
        env = dict(os.environ, SMSUPER_ALLOW_PRIVILEGED="1", SMSUPER_USER="root", SMSUPER_METRICS_PORT="0",
                   SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(self.port),
                   SAGEMAKER_MODEL_SERVER_WORKERS="2", SMSUPER_CACHE_DIR=str(work / "cache"),
                   SMSUPER_RUNTIME_DIR=str(work / "run"))
        env.pop("PYTHONPATH", None)
        self.log = open(work / "smsuper.log", "wb")
        self.proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                      sys.executable, str(pyz), "serve"], env=env, cwd=str(work),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}/invocations-bidirectional-stream"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # --kill-child takes the namespace with it
        self.proc.wait(30)
        self.log.close()


class Bare:
    name = "bare wsproto"

    def __init__(self, pyz: Path, work: Path):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(pyz), str(self.port)])
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=None, help="measure this pyz (default: build one)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "bidirectional.json")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smsuper-bench-ws-") as temp:
        work = Path(temp)
        pyz = options.pyz.resolve() if options.pyz else None
        if pyz is None:
            pyz = work / "smsuper.pyz"
            subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(pyz)], check=True,
                           stdout=subprocess.DEVNULL)
        (work / "smsuper").mkdir()
        stacks = [Smsuper(pyz, work / "smsuper"), Bare(pyz, work / "bare")]
        try:
            for stack in stacks:
                try:
                    wait_open(stack.url)
                except SystemExit:
                    if isinstance(stack, Smsuper):
                        sys.stderr.write((work / "smsuper" / "smsuper.log").read_text(errors="replace")[-3000:])
                    raise
            runs: Dict[str, Dict[str, List[float]]] = {s.name: {"p50_ms": [], "p99_ms": [], "messages_per_s": []}
                                                       for s in stacks}
            for round_index in range(options.rounds):
                order = stacks if round_index % 2 == 0 else stacks[::-1]
                for stack in order:
                    single = measure(stack.url, 1, options.seconds)
                    several = measure(stack.url, CONNECTIONS, options.seconds)
                    runs[stack.name]["p50_ms"].append(single["p50_ms"])
                    runs[stack.name]["p99_ms"].append(single["p99_ms"])
                    runs[stack.name]["messages_per_s"].append(several["messages_per_s"])
        finally:
            for stack in stacks:
                stack.stop()
    medians = {name: {key: statistics.median(values) for key, values in figures.items()}
               for name, figures in runs.items()}
    smsuper, bare = medians["smsuper"], medians["bare wsproto"]
    print(f"{'':24}{'smsuper':>12}{'bare wsproto':>14}{'ratio':>8}")
    for key, label in (("p50_ms", "round trip p50 ms"), ("p99_ms", "round trip p99 ms"),
                       ("messages_per_s", f"messages/s, {CONNECTIONS} conns")):
        print(f"{label:24}{smsuper[key]:>12.3f}{bare[key]:>14.3f}{smsuper[key] / bare[key]:>8.2f}")
    load = os.getloadavg()
    options.results.parent.mkdir(parents=True, exist_ok=True)
    options.results.write_text(json.dumps({"runs": runs, "medians": medians, "seconds": options.seconds,
                                           "connections": CONNECTIONS, "message_bytes": len(MESSAGE),
                                           "cpus": os.cpu_count(), "load_average_at_end": load}, indent=1) + "\n")
    print(f"load average at the end: {load[0]:.2f}; every run in {options.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
