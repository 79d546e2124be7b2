"""The route table (smsuper/serve/routes.py) is the one place routes are declared.

A row added to it, and nothing else, is served by nginx and by the Flask app, refused with the
same 405 (with its Allow header) and 404 by both, and counted under its own label by PID 1 (from
nginx's access log) and by the workers (without nginx). The proof builds the pyz from a copy of
this checkout whose table has two rows more (an exact path, and one with a <name> segment whose
answer nginx passes on unbuffered, both answered by the existing `invoke` entry) and serves it
for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from helpers import (IDENTITY, WAIT_LIMIT, eventually, make_service, parse, scrape, serving_with_metrics,
                     user_app_service, value, wait_counted)

ROOT = Path(__file__).resolve().parent.parent
ADDED_ROWS = ('    Route("/predict", ("POST",), "invoke"),\n'
              '    Route("/models/<name>/invoke", ("POST",), "invoke", body=STREAMED),\n')


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    """smsuper.pyz built from a copy of this checkout whose route table has ADDED_ROWS too
    (this module's `serve` fixture runs it)."""
    tree = tmp_path_factory.mktemp("one-more-row")
    shutil.copytree(ROOT / "smsuper", tree / "smsuper", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("build_zipapp.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tree / name)
    (tree / "build").mkdir()
    os.symlink(ROOT / "build" / "wheels", tree / "build" / "wheels")  # the checkout's wheels: no download
    table = tree / "smsuper" / "serve" / "routes.py"
    text = table.read_text()
    added = re.sub(r"(\nTABLE\b[^\n]*= \(\n(?:    [^\n]*\n)+)\)", lambda match: match[1] + ADDED_ROWS + ")",
                   text, count=1)
    assert added != text, "routes.py has no TABLE = (...) to add a row to"
    table.write_text(added)
    subprocess.run([sys.executable, str(tree / "build_zipapp.py"), "-o", str(tree / "smsuper.pyz")], check=True,
                   stdout=subprocess.DEVNULL)
    return tree / "smsuper.pyz"


@pytest.mark.slow  # builds a pyz of its own and serves it
@pytest.mark.parametrize("front", ["nginx", "workers alone"])
def test_a_row_added_to_the_table_is_served_refused_and_counted_alike(serve, front):
    server, metrics_port = serving_with_metrics(
        serve, **({} if front == "nginx" else {"SMSUPER_NGINX": "/nonexistent/nginx"}))

    exact = requests.post(server.url("/predict"), json=[1, 2], timeout=WAIT_LIMIT)
    assert exact.status_code == 200 and exact.json() == [1, 2], exact.text
    named = requests.post(server.url("/models/iris/invoke"), json={"x": 3}, timeout=WAIT_LIMIT)
    assert named.status_code == 200 and named.json() == {"x": 3}, named.text

    wrong = requests.get(server.url("/predict"), timeout=WAIT_LIMIT)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert wrong.headers["Content-Type"] == "application/json" and "GET" in wrong.json()["error"]
    unknown = requests.post(server.url("/models/iris"), json=[1], timeout=WAIT_LIMIT)
    assert unknown.status_code == 404
    assert "/predict" in unknown.json()["error"] and "/models/<name>/invoke" in unknown.json()["error"]
    assert requests.post(server.url("/invocations"), json=[5], timeout=WAIT_LIMIT).json() == [5]

    expected = {("/predict", "200"): 1, ("/predict", "405"): 1, ("/models/<name>/invoke", "200"): 1,
                ("other", "404"): 1, ("/invocations", "200"): 1}
    counts = wait_counted(metrics_port, expected)
    assert {key: counts[key] for key in expected} == expected

    # The workers time them under the same labels, nginx in front or not.
    def timed() -> bool:
        samples = parse(scrape(metrics_port))
        return all((value(samples, "smsuper_http_request_duration_seconds_count", route=route) or 0) >= 1
                   for route in ("/predict", "/models/<name>/invoke"))

    eventually(timed, "the workers' latency of the added routes")
    assert server.terminate() == 0


# ---- in-process: each consumer reads the table it is given (the source tree, not the pyz) ----------

def test_nginx_the_flask_app_and_pid1s_counts_take_a_row_from_the_table(tmp_path, monkeypatch):

    from smsuper.metrics.responses import ResponseCounts
    from smsuper.serve import nginx
    from smsuper.serve import runtime as runtime_dir
    from smsuper.serve.worker.app import create_app

    from smsuper.serve import routes
    monkeypatch.setattr(routes, "TABLE", routes.TABLE + (
        routes.Route("/score", ("PUT",), "invoke"),
        routes.Route("/stream/<name>", ("POST",), "invoke", body=routes.STREAMED)))
    service = make_service(tmp_path, IDENTITY)

    config = nginx.render(service.config, runtime_dir.RuntimeDir(str(tmp_path / "run")), (1, 22, 1), 1)

    def location(opening: str) -> str:
        block = config[config.index(opening):]
        return block[:block.index("}\n        location")]

    assert "^(PUT)$" in location("location = /score {") and "proxy_pass" in location("location = /score {")
    assert "~^/score(\\?|$) /score;" in config and '~^/score(\\?|$) "PUT";' in config
    streamed = location("location ~ ^/stream/[^/]+$ {")
    assert "proxy_buffering off;" in streamed and "^(POST)$" in streamed
    assert config.count("proxy_buffering off;") == 1  # the other rows' answers stay buffered
    assert "~^/stream/[^/?]+(\\?|$) /stream/<name>;" in config

    client = create_app(service).test_client()
    assert client.put("/score", json=[7]).get_json() == [7]
    assert client.post("/stream/abc", json=[8]).get_json() == [8]
    refused = client.post("/score", json=[7])
    assert refused.status_code == 405 and refused.headers["Allow"] == "PUT"
    assert "/score" in client.get("/nowhere").get_json()["error"]

    counts = ResponseCounts()
    counts.add(b"/score", b"200")
    counts.add(b"/scores", b"200")
    assert counts.counts == {("/score", "200"): 1, ("other", "200"): 1}


def test_a_users_app_gets_smsupers_answer_on_a_fallback_row_only_when_it_answers_404(tmp_path, monkeypatch):

    from smsuper.serve import routes
    monkeypatch.setattr(routes, "TABLE", routes.TABLE + (
        routes.Route("/parameters", ("GET",), "execution_parameters", user_app=routes.FALLBACK),))
    app = """
from flask import Flask
app = Flask(__name__)

@app.route("/ping")
def ping():
    return ""
"""
    from werkzeug.test import Client

    client = Client(user_app_service(tmp_path, app))
    answered = client.get("/parameters")
    assert answered.status_code == 200 and "MaxPayloadInMB" in answered.get_json()
    assert client.get("/elsewhere").status_code == 404  # not a fallback row: the app's own 404


def test_a_row_naming_an_entry_the_service_lacks_stops_the_app_saying_which(tmp_path, monkeypatch):

    from smsuper.serve import routes
    from smsuper.serve.worker.app import create_app
    monkeypatch.setattr(routes, "TABLE", routes.TABLE + (routes.Route("/explain", ("POST",), "explain"),))
    with pytest.raises(TypeError, match="/explain.*explain"):
        create_app(make_service(tmp_path, IDENTITY))
