"""Stateful sessions through real nginx and gunicorn: made, used from different workers (one of
them a replacement for a killed worker), closed, expired and swept, unknown, hostile ids."""

from __future__ import annotations

import os
import re
import signal
import uuid

import pytest

from helpers import eventually, host_pid

pytestmark = [pytest.mark.slow]  # serving stacks

NEW = "X-Amzn-SageMaker-New-Session-Id"
ID = "X-Amzn-SageMaker-Session-Id"
CLOSED = "X-Amzn-SageMaker-Closed-Session-Id"

COUNTER = """
import os

def model_fn(model_dir):
    return None

def predict_fn(data, model, context):
    session = context.session
    if session is None:
        return {"session": None, "pid": os.getpid()}
    session["turns"] = session.get("turns", 0) + 1
    with open(os.path.join(session.path, "note.txt"), "a") as note:
        note.write("turn\\n")
    return {"session": session.id, "turns": session["turns"], "pid": os.getpid(), "keys": session.keys()}
"""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as status:
            return status.read().lower()
    except OSError:
        return ""


def _sessions_dir(server) -> str:
    return str(server.base.parent / "run" / "shared" / "sessions")


def test_a_session_is_made_used_by_another_worker_and_closed(serve):
    server = serve(COUNTER, SAGEMAKER_ENABLE_STATEFUL_SESSIONS="true")
    server.wait_ready()
    first = server.post({"x": 1}, **{ID: "NEW_SESSION"})
    assert first.status_code == 200, first.text
    made = re.fullmatch(r"([0-9a-f-]{36}); Expires=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", first.headers[NEW])
    assert made, first.headers[NEW]
    session_id = made.group(1)
    assert first.json()["session"] == session_id and first.json()["turns"] == 1
    # The worker that served it is restarted (SIGTERM: it leaves, gunicorn replaces it); its
    # replacement or the other worker serves the next turn.
    victim = host_pid(first.json()["pid"], server.init_pid())
    os.kill(victim, signal.SIGTERM)
    eventually(lambda: not os.path.exists(f"/proc/{victim}") or "zombie" in _state(victim), "the worker to exit")
    server.wait_ready()
    second = server.post({"x": 2}, **{ID: session_id})
    assert second.status_code == 200, second.text
    assert second.json()["turns"] == 2 and second.json()["pid"] != first.json()["pid"]
    assert second.json()["keys"] == ["turns"]
    assert NEW not in second.headers
    store = os.path.join(_sessions_dir(server), session_id)
    with open(os.path.join(store, "files", "note.txt")) as note:
        assert note.read() == "turn\nturn\n"
    # Closing it: the documented body, the header naming it.
    closed = server.post({"requestType": "CLOSE"}, **{ID: session_id})
    assert closed.status_code == 200 and closed.headers[CLOSED] == session_id
    assert not os.path.exists(store)  # its state is freed
    after = server.post({"x": 3}, **{ID: session_id})
    assert after.status_code == 400 and "no session" in after.json()["error"]
    # Without a session header the handler runs without a session.
    assert server.post({"x": 4}).json()["session"] is None
    assert server.terminate() == 0


def test_the_body_form_makes_a_session_without_calling_the_handler(serve):
    server = serve(COUNTER, SAGEMAKER_ENABLE_STATEFUL_SESSIONS="true")
    server.wait_ready()
    answer = server.post({"requestType": "NEW_SESSION"})
    assert answer.status_code == 200 and NEW in answer.headers
    session_id = answer.headers[NEW].split(";")[0]
    assert answer.json()["session_id"] == session_id
    turn = server.post({"x": 1}, **{ID: session_id})
    assert turn.json()["turns"] == 1  # the creating request was no turn
    bad = server.post({"requestType": "DELETE"}, **{ID: session_id})
    assert bad.status_code == 400 and "requestType" in bad.json()["error"]
    assert server.post({"requestType": "CLOSE"}).status_code == 400  # which session?
    assert server.terminate() == 0


def test_unknown_and_hostile_session_ids_are_a_clear_400(serve):
    server = serve(COUNTER, SAGEMAKER_ENABLE_STATEFUL_SESSIONS="true")
    server.wait_ready()
    unknown = server.post({"x": 1}, **{ID: str(uuid.uuid4())})
    assert unknown.status_code == 400
    assert "no session" in unknown.json()["error"] and "NEW_SESSION" in unknown.json()["error"]
    for hostile in ("../../../etc", "..", "/etc/passwd", "x" * 300, "NEW_SESSIONS", str(uuid.uuid4()).upper(),
                    ".new-" + str(uuid.uuid4())):
        answer = server.post({"x": 1}, **{ID: hostile})
        assert answer.status_code == 400, hostile
        assert ID in answer.json()["error"], answer.json()
    assert os.listdir(_sessions_dir(server)) == []
    assert server.terminate() == 0


def test_expired_sessions_are_swept_without_a_request(serve):
    server = serve(COUNTER, SAGEMAKER_ENABLE_STATEFUL_SESSIONS="true", SAGEMAKER_SESSIONS_EXPIRATION="2")
    server.wait_ready()
    session_id = server.post({"x": 1}, **{ID: "NEW_SESSION"}).headers[NEW].split(";")[0]
    store = os.path.join(_sessions_dir(server), session_id)
    assert os.path.isdir(store)
    eventually(lambda: not os.path.exists(store), "the expired session to be swept")
    answer = server.post({"x": 2}, **{ID: session_id})
    assert answer.status_code == 400 and "expired" in answer.json()["error"]
    assert server.terminate() == 0


def test_sessions_are_off_unless_enabled(serve):
    server = serve(COUNTER)
    server.wait_ready()
    answer = server.post({"x": 1}, **{ID: "NEW_SESSION"})
    assert answer.status_code == 200 and NEW not in answer.headers
    assert answer.json()["session"] is None
    assert server.terminate() == 0
