"""What one /invocations costs the worker's WSGI app alone: CPU µs per request, in this process.

    python3 bench/app_cost.py                      # the trivial model, metrics on
    python3 bench/app_cost.py --model sklearn      # the real model (needs scikit-learn, joblib)
    python3 bench/app_cost.py --no-metrics         # without the request metrics' middleware
    python3 bench/app_cost.py --bare               # bench/apps/bare_app.py's Flask app, for scale
    python3 bench/app_cost.py --profile            # cProfile of 20,000 requests instead

A diagnostic (not judged, no HTTP, no nginx, no gunicorn): the app that build_wsgi() makes in a
worker, from this source tree, called with the environ gunicorn hands a worker (its
`wsgi.input_terminated` included), its body read and closed as gunicorn does. CPU time, the
median of 7 runs of 5,000 requests, so other work on the machine moves it much less than wall
time. It tells the app layer's share (Flask, handlers, codecs, metrics) of figure 1's server
CPU per request from the HTTP layer's (nginx, the worker's parser and writer).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"


def model_base(kind: str, where: Path) -> tuple:
    """SAGEMAKER_BASE_DIR for `kind`, and the request's body, content type and Accept."""
    code = where / "model" / "code"
    code.mkdir(parents=True)
    if kind == "trivial":
        (code / "inference.py").write_text((APPS / "model_trivial.py").read_text())
        return b'{"x": [1, 2, 3]}', "application/json", None
    (code / "inference.py").write_text((APPS / "model_sklearn.py").read_text())
    subprocess.run([sys.executable, str(APPS / "make_sklearn_model.py"), str(where / "model"), str(where)],
                   check=True, stdout=subprocess.DEVNULL)
    return (where / "rows-1.csv").read_bytes(), "text/csv", "text/csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("trivial", "sklearn"), default="trivial")
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--bare", action="store_true")
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    where = Path(tempfile.mkdtemp(prefix="app-cost-"))
    body, content_type, accept = model_base(options.model, where / "ml")
    os.environ.update({"SAGEMAKER_BASE_DIR": str(where / "ml"), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})

    from smsuper.metrics.worker import serving
    from smsuper.serve import config
    from smsuper.serve.master.gunicorn_app import build_wsgi

    metrics = not options.no_metrics
    if metrics:
        (where / "metrics").mkdir()
        serving.install(str(where / "metrics"), count_requests=False)  # as behind nginx
    if options.bare:
        sys.path.insert(0, str(APPS))
        import bare_app

        app = serving.wrap(bare_app.app) if metrics else bare_app.app
    else:
        app = build_wsgi(config.resolve(dict(os.environ)), None)

    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def one() -> None:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "RAW_URI": "/invocations", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost",
            "SERVER_PORT": "8080", "REMOTE_ADDR": "", "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "localhost", "HTTP_CONNECTION": "keep-alive",
            "HTTP_USER_AGENT": "wrk", "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}
        if accept:
            environ["HTTP_ACCEPT"] = accept
        answer = app(environ, start_response)
        b"".join(answer)
        close = getattr(answer, "close", None)
        if close is not None:
            close()

    for _ in range(2000):
        one()
    if statuses[-1] != "200 OK":
        raise SystemExit(f"the app answered {statuses[-1]}")
    if options.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20000):
            one()
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return
    runs = []
    for _ in range(7):
        began = time.process_time()
        for _ in range(5000):
            one()
        runs.append((time.process_time() - began) / 5000 * 1e6)
    which = "bare Flask app" if options.bare else "smsuper's app"
    print(f"{which}, {options.model} model, metrics {'on' if metrics else 'off'}: "
          f"{statistics.median(runs):.1f} CPU µs per request (min {min(runs):.1f}, max {max(runs):.1f})")


if __name__ == "__main__":
    main()
