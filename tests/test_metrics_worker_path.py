"""A worker's request metrics, in-process: what lands in its prometheus_client files.

The requests in flight are written straight into their mmap slot and the timings are kept in
slots made once (metrics/worker/serving.py); these check the files PID 1 reads, in the process
that installed the metrics and in a worker forked from it, as gunicorn forks its workers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from smsuper.metrics import multiproc
    from smsuper.metrics.worker import serving

    directory = sys.argv[2]
    serving.install(directory, count_requests=False)

    def value(kind, name, pid):
        path = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(path):
            return None
        found = [v for key, v, _ in multiproc.read_entries(path) if '"' + name + '"' in key.split(",", 2)[1]]
        return sum(found) if found else None

    seen = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        def body():
            seen.append(value("gauge_livesum", "smsuper_http_requests_in_flight", os.getpid()))
            yield b"ok"
        return body()

    wrapped = serving.wrap(app)

    def request():
        answer = wrapped({"PATH_INFO": "/invocations", "REQUEST_METHOD": "POST"}, lambda s, h, e=None: None)
        b"".join(answer)
        answer.close()
        return value("gauge_livesum", "smsuper_http_requests_in_flight", os.getpid())

    def latency_count():
        serving.publish_pending()
        path = os.path.join(directory, f"histogram_{os.getpid()}.db")
        return sum(v for key, v, _ in multiproc.read_entries(path)
                   if "smsuper_http_request_duration_seconds_bucket" in key and '"/invocations"' in key)

    after = [request(), request()]
    print("parent", seen, after, latency_count())
    child = os.fork()
    if child == 0:
        seen.clear()
        serving.model_loaded(0.5)  # another metric's update sees the fork first
        after = [request()]
        print("child", seen, after, latency_count(), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
""")


def test_requests_in_flight_and_latencies_reach_the_files_of_each_process(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    # One request in flight while its body is sent, none once it is closed; 2 latencies counted.
    assert lines["parent"] == "[1.0, 1.0] [0.0, 0.0] 2.0"
    # The forked worker writes its own file, from its own count.
    assert lines["child"] == "[1.0] [0.0] 1.0"
