"""Streamed answers: chunks per second and time to first byte, smsuper vs bare gunicorn.

    python3 bench/streaming.py            # 5 runs of each figure
    python3 bench/streaming.py --quick    # 1 run (proves nothing)

A figure module of its own (run.py's figures are left alone): it builds smsuper.pyz from this
checkout, starts `smsuper serve` with a handler whose predict_fn returns a generator
(apps/model_stream.py) and, as the baseline in the same run, the same generator in a minimal
Flask app on bare gunicorn over TCP (apps/bare_stream_app.py), both from the pyz's own gunicorn
and Flask, 2 sync workers each. One client (http.client, the same code for both):

  chunks/s   one stream of CHUNKS chunks of 64 bytes, read to its end; per-chunk latency is
             its inverse
  TTFB       a one-chunk stream, from sending the request to its first body byte; TTFB_REQUESTS
             requests on one kept connection, p50 and p99

Goals (the issue's): chunks/s >= 0.8x bare, TTFB <= 1.2x bare. Prints one table; writes
bench/results/streaming.json (not committed: bench/results/ keeps run.py's record).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import stacks  # noqa: E402
from run import make_venv, standalone_workdir, unpacked_context  # noqa: E402

CHUNKS = 20000
TTFB_REQUESTS = 200


class StreamSmsuper(stacks.Smsuper):
    name = "smsuper-stream"


class StreamBare(stacks.Stack):
    name = "bare-stream"

    def command(self) -> List[str]:
        return self.ctx.gunicorn_command() + [
            "--workers", str(stacks.WORKERS), "--worker-class", "sync", "--bind", f"127.0.0.1:{self.port}",
            "--chdir", str(self.ctx.workdir / "apps"), "--log-level", "warning", "bare_stream_app:app"]


def _post(connection: http.client.HTTPConnection, body: Dict) -> http.client.HTTPResponse:
    connection.request("POST", "/invocations", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return connection.getresponse()


def chunks_per_second(port: int, chunks: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    began = time.perf_counter()
    response = _post(connection, {"chunks": chunks, "size": 64})
    received = 0
    while True:
        piece = response.read(65536)
        if not piece:
            break
        received += len(piece)
    elapsed = time.perf_counter() - began
    connection.close()
    if received != chunks * 64:
        raise harness.BenchError(f"got {received} bytes, wanted {chunks * 64}")
    return chunks / elapsed


def first_bytes(port: int, count: int) -> List[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    _post(connection, {"chunks": 1}).read()  # warm: the connection and the worker
    times = []
    for _ in range(count):
        began = time.perf_counter()
        response = _post(connection, {"chunks": 1})
        response.read(1)
        times.append(time.perf_counter() - began)
        response.read()
    connection.close()
    return times


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/streaming.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--python", default="/usr/bin/python3")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else 5
    with standalone_workdir("smsuper-bench-stream-") as (workdir, pyz):
        python = make_venv(args.python, workdir / "venv")
        ctx = unpacked_context(workdir, pyz, python)
        results: Dict[str, Dict] = {}
        for stack in (StreamSmsuper(ctx, model="stream"), StreamBare(ctx)):
            with stack:
                stack.wait_ready()
                rates = [chunks_per_second(stack.port, CHUNKS) for _ in range(runs)]
                ttfb: List[float] = []
                for _ in range(runs):
                    ttfb.extend(first_bytes(stack.port, TTFB_REQUESTS))
                results[stack.name] = {
                    "chunks_per_s": harness.summary(rates, 0),
                    "ttfb_p50_ms": round(harness.percentile(ttfb, 0.5) * 1000, 3),
                    "ttfb_p99_ms": round(harness.percentile(ttfb, 0.99) * 1000, 3),
                }
        ours, bare = results["smsuper-stream"], results["bare-stream"]
        rate_ratio = ours["chunks_per_s"]["median"] / bare["chunks_per_s"]["median"]
        ttfb_ratio = ours["ttfb_p50_ms"] / bare["ttfb_p50_ms"]
        print(f"| stack | chunks/s (64 B) median (min-max) | per-chunk us | TTFB p50 ms | TTFB p99 ms |")
        print("|---|---|---|---|---|")
        for name, figure in results.items():
            rate = figure["chunks_per_s"]
            print(f"| {name} | {rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f}) | "
                  f"{1e6 / rate['median']:.1f} | {figure['ttfb_p50_ms']:.3f} | {figure['ttfb_p99_ms']:.3f} |")
        print(f"\nchunks/s: {rate_ratio:.2f}x bare (goal >= 0.8x: {'met' if rate_ratio >= 0.8 else 'NOT met'}); "
              f"TTFB p50: {ttfb_ratio:.2f}x bare (goal <= 1.2x: {'met' if ttfb_ratio <= 1.2 else 'NOT met'})")
        results["ratios"] = {"chunks_per_s": round(rate_ratio, 3), "ttfb_p50": round(ttfb_ratio, 3),
                             "runs": runs, "chunks": CHUNKS, "ttfb_requests": TTFB_REQUESTS,
                             "load": harness.machine_load()}
        if not args.quick:
            out = harness.HERE / "results" / "streaming.json"
            out.write_text(json.dumps(results, indent=2) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
