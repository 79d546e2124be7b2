"""The serving app's shortcut past Flask's dispatch answers exactly as Flask's dispatch does.

Each request here goes twice through the same app: once by the shortcut, once with the
shortcut switched off (Flask's full dispatch), and the two answers (status line, every header
in order, body, the log lines) must be the same; once as gunicorn hands a request over (its
input ends at the body's end: `wsgi.input_terminated`), once as werkzeug's test client does
(without it). Each case also checks which way it went, so a shortcut that silently stopped
applying, or applied where it must not, fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import IDENTITY, make_service  # noqa: E402

GUNICORN = {"wsgi.input_terminated": True}

HANDLERS = """
import json
import types

class Teapot(Exception):
    status_code = 418

def model_fn(model_dir):
    return "model"

def input_fn(body, content_type, context):
    if content_type == "text/plain":
        return body.decode("utf-8")
    return json.loads(body)

def predict_fn(data, model, context):
    if data == "boom":
        raise RuntimeError("the model broke")
    if data == "teapot":
        raise Teapot("short and stout")
    if data == "attributes":
        context.set_custom_attributes("trace=1")
    if data == "newline":
        context.set_response_header("X-Bad", "a\\nb")
    if data == "own-length":
        context.set_response_header("Content-Length", "999")
    if data == "own-type":
        context.set_response_header("Content-Type", "text/x-mine")
    if data == "bad-type":
        context.set_response_header("Content-Type", "text/plain\\nX-Injected: 1")
    if data == "stream":
        return (str(i) for i in range(3))
    return data

def output_fn(prediction, accept, context):
    if prediction == "pair":
        return "a,b", "text/csv"
    if prediction == "none":
        return b""
    if isinstance(prediction, (str, types.GeneratorType)):
        return prediction  # a generator is streamed
    return json.dumps(prediction)
"""


def _apps(tmp_path: Path, code: str, **env: str):
    from smsuper.serve.worker.app import create_app

    app = create_app(make_service(tmp_path, code, **env))
    dispatched = []
    full = app.request_context

    def counting(environ):
        dispatched.append(environ.get("PATH_INFO"))
        return full(environ)

    app.request_context = counting  # Flask's full dispatch starts here
    return app, dispatched


def _answer(app, method: str, path: str, environ_base=None, **kwargs):
    client = app.test_client()
    if environ_base:
        client.environ_base.update(environ_base)
    response = client.open(path, method=method, **kwargs)
    return response.status, list(response.headers.items()), response.get_data()


def _both(app, dispatched, capfd, method, path, environ_base=None, **kwargs):
    capfd.readouterr()
    shortcut = _answer(app, method, path, environ_base, **kwargs)
    shortcut_log = capfd.readouterr().err
    took_shortcut = not dispatched
    dispatched.clear()
    kept = dict(app.shortcuts)
    app.shortcuts.clear()  # Flask's dispatch for every request
    try:
        flask = _answer(app, method, path, environ_base, **kwargs)
    finally:
        app.shortcuts.update(kept)
    flask_log = capfd.readouterr().err
    assert dispatched, "the request went through Flask's dispatch"
    dispatched.clear()
    return shortcut, flask, took_shortcut, shortcut_log, flask_log


CASES = [
    # (method, path, request arguments, whether the shortcut takes it, the status both answer)
    ("POST", "/invocations", {"data": b'{"a": [1, 2]}', "content_type": "application/json"}, True, 200),
    ("POST", "/invocations", {"data": b"pair", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"none", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"attributes", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"newline", "content_type": "text/plain"}, True, 500),
    ("POST", "/invocations", {"data": b"own-length", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"own-type", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"bad-type", "content_type": "text/plain"}, True, 500),
    ("POST", "/invocations", {"data": b"stream", "content_type": "text/plain"}, True, 200),
    ("POST", "/invocations", {"data": b"boom", "content_type": "text/plain"}, True, 500),
    ("POST", "/invocations", {"data": b"teapot", "content_type": "text/plain"}, True, 418),
    ("POST", "/invocations", {"data": b"{not json", "content_type": "application/json"}, True, 500),
    ("POST", "/invocations", {"data": b"[1]", "content_type": "application/json",
                              "headers": {"Accept": "image/png"}}, True, 200),
    ("POST", "/invocations", {"data": b"[1]"}, True, 200),  # no Content-Type
    ("POST", "/invocations", {"data": b"x" * (2 * 1024 * 1024), "content_type": "text/plain"}, False, 413),
    ("GET", "/invocations", {}, False, 405),
    ("OPTIONS", "/invocations", {}, False, 405),
    ("GET", "/ping", {}, True, 200),
    ("HEAD", "/ping", {}, False, 200),
    ("POST", "/ping", {}, False, 405),
    ("GET", "/execution-parameters", {}, True, 200),
    ("GET", "/nowhere", {}, False, 404),
    ("GET", "/invocations/", {}, False, 404),
]


@pytest.mark.parametrize("server", ["gunicorn", "werkzeug"])
@pytest.mark.parametrize("method, path, kwargs, shortcut, status", CASES,
                         ids=[f"{c[0]} {c[1]} {c[2].get('data', b'')[:12]!r}" for c in CASES])
def test_the_shortcut_answers_as_flasks_dispatch_does(tmp_path, capfd, method, path, kwargs, shortcut, status,
                                                       server):
    app, dispatched = _apps(tmp_path, HANDLERS, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    environ_base = GUNICORN if server == "gunicorn" else None
    fast, full, took, fast_log, full_log = _both(app, dispatched, capfd, method, path, environ_base, **kwargs)
    assert fast == full
    assert int(fast[0][:3]) == status, fast
    assert took == shortcut
    assert _without_frames(fast_log) == _without_frames(full_log)


def _without_frames(log: str) -> list:
    """The log lines without a traceback's frames (the two ways' call stacks differ, by design)."""
    lines = log.splitlines()
    return [line for number, line in enumerate(lines)
            if not line.startswith("smsuper: ERROR:  ") and "Traceback" not in line
            or number == len(lines) - 1]


def test_a_chunked_body_takes_flasks_dispatch_which_reads_no_more_than_the_limit(tmp_path, capfd):
    app, dispatched = _apps(tmp_path, IDENTITY, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    environ = dict(GUNICORN, HTTP_TRANSFER_ENCODING="chunked")
    status, _, body = _answer(app, "POST", "/invocations", environ, data=b"[" + b"1," * 600000 + b"1]",
                              content_type="application/json")
    assert dispatched == ["/invocations"]
    # werkzeug stops reading at the limit: what it read is no whole JSON value.
    assert status.startswith("400") and "not valid JSON" in json.loads(body)["error"]


class _Gone:
    """A request body whose client went away: `sent` bytes, then the end or a reset."""

    def __init__(self, sent: bytes, reset: bool):
        self.sent, self.reset = sent, reset

    def read(self, size=-1):
        if self.reset and (size is None or size < 0 or not self.sent):  # reading to the end meets the reset
            raise ConnectionResetError(104, "Connection reset by peer")
        data, self.sent = self.sent, b""
        return data


@pytest.mark.parametrize("terminated", [True, False])
def test_a_client_gone_before_its_body_ends_is_a_400_both_ways(tmp_path, capfd, terminated):
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app, dispatched = _apps(tmp_path, IDENTITY)
    answers = []
    for shortcut in (True, False):
        kept = dict(app.shortcuts)
        if not shortcut:
            app.shortcuts.clear()
        environ = EnvironBuilder("/invocations", method="POST", data=b"[1, 2, 3]",
                                 content_type="application/json").get_environ()
        environ["CONTENT_LENGTH"] = "100"
        environ["wsgi.input"] = _Gone(b"[1, 2", reset=terminated)
        if terminated:
            environ["wsgi.input_terminated"] = True
        body, status, headers = run_wsgi_app(app, environ)
        answers.append((status, list(headers.items()), b"".join(body)))
        app.shortcuts.update(kept)
    assert answers[0] == answers[1]
    # werkzeug's ClientDisconnected: a 400 with BadRequest's words, JSON like every error.
    assert answers[0][0] == "400 BAD REQUEST" and b"could not understand" in answers[0][2], answers[0]
    assert dispatched == ["/invocations"]


def test_a_model_still_loading_answers_503_with_retry_after_both_ways(tmp_path, capfd):
    from smsuper.serve.worker.app import create_app
    from smsuper.serve.worker.service import LOADING

    service = make_service(tmp_path, IDENTITY)
    service.state = LOADING
    app = create_app(service)
    fast = _answer(app, "POST", "/invocations", GUNICORN, data=b"[1]", content_type="application/json")
    app.shortcuts.clear()
    full = _answer(app, "POST", "/invocations", GUNICORN, data=b"[1]", content_type="application/json")
    assert fast == full
    assert fast[0].startswith("503") and ("Retry-After", "1") in fast[1]


FLASK_HANDLERS = """
import flask

def model_fn(model_dir):
    return "model"

def input_fn(body, content_type):
    # Flask's request context: only its full dispatch has one.
    return flask.request.headers.get("X-Which", "none")

def predict_fn(data, model):
    return data

def output_fn(prediction, accept):
    return flask.jsonify(which=prediction)
"""


def test_a_handler_module_that_uses_flask_gets_flasks_dispatch(tmp_path):
    app, dispatched = _apps(tmp_path, FLASK_HANDLERS)
    status, headers, body = _answer(app, "POST", "/invocations", GUNICORN, data=b"x",
                                    content_type="text/plain", headers={"X-Which": "this one"})
    assert status == "200 OK", body
    assert json.loads(body) == {"which": "this one"}
    assert dispatched == ["/invocations"]


def test_a_hook_registered_on_the_app_runs_for_every_request(tmp_path):
    from flask import request_started

    app, dispatched = _apps(tmp_path, IDENTITY)
    seen = []
    app.after_request(lambda response: (seen.append(response.status), response)[1])
    _answer(app, "POST", "/invocations", GUNICORN, data=b"[1]", content_type="application/json")
    assert seen == ["200 OK"]

    app2, dispatched2 = _apps(tmp_path / "signal", IDENTITY)
    started = []

    def receiver(sender, **extra):
        started.append(sender)

    request_started.connect(receiver, app2)
    try:
        _answer(app2, "POST", "/invocations", GUNICORN, data=b"[1]", content_type="application/json")
    finally:
        request_started.disconnect(receiver, app2)
    assert started == [app2]


def test_a_handler_module_that_uses_flask_and_is_loaded_after_the_app_was_made_gets_flasks_dispatch(tmp_path):
    from smsuper.serve.worker.app import create_app

    service = make_service(tmp_path / "first", IDENTITY)
    app = create_app(service)
    assert _answer(app, "POST", "/invocations", GUNICORN, data=b"[1]", content_type="application/json")[0] == "200 OK"
    later = make_service(tmp_path / "later", FLASK_HANDLERS)
    service.handlers, service.model = later.handlers, later.model  # a model (re)loaded at run time
    status, _, body = _answer(app, "POST", "/invocations", GUNICORN, data=b"x", content_type="text/plain",
                              headers={"X-Which": "the later one"})
    assert status == "200 OK", body
    assert json.loads(body) == {"which": "the later one"}


HELPER_USES_FLASK = """
import sys
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import which_header  # a helper module of the user's: it, not this module, uses flask.request

def model_fn(model_dir):
    return "model"

def input_fn(body, content_type):
    return which_header.which()

def predict_fn(data, model):
    return data

def output_fn(prediction, accept):
    return prediction.encode(), "text/plain"
"""

WHICH_HEADER = """
import flask

def which():
    return flask.request.headers.get("X-Which", "none")
"""


def test_a_helper_module_that_uses_flask_fails_one_request_naming_the_fix_then_gets_flasks_dispatch(tmp_path):
    """The shortcut cannot see a Flask request context used from a module the handler module
    imports. The first such request is a 500 that says what happened and what to do; from then
    on that model's requests go through Flask's dispatch, and answer."""
    from smsuper.serve.worker.app import create_app

    code_dir = tmp_path / "ml" / "model" / "code"
    code_dir.mkdir(parents=True)
    (code_dir / "which_header.py").write_text(WHICH_HEADER)
    sys.modules.pop("which_header", None)
    app = create_app(make_service(tmp_path, HELPER_USES_FLASK))
    status, _, body = _answer(app, "POST", "/invocations", GUNICORN, data=b"x", content_type="text/plain",
                              headers={"X-Which": "first"})
    assert status == "500 INTERNAL SERVER ERROR"
    message = json.loads(body)["error"]
    assert "Working outside of request context" in message
    assert "import flask" in message and "inference.py" in message
    status, _, body = _answer(app, "POST", "/invocations", GUNICORN, data=b"x", content_type="text/plain",
                              headers={"X-Which": "second"})
    assert (status, body) == ("200 OK", b"second")
