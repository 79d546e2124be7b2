"""Server-side batching (SMSUPER_BATCH_SIZE, SMSUPER_BATCH_DELAY_MS) through real nginx and gunicorn.

Nothing here depends on timing: the delay to fill a batch is set far beyond the
tests' own limits, so a batch goes only when it is full (or when the server is
stopping), and sending as many requests as the batch size makes them one batch.
The model records the size of every call it gets in calls/, one file per call.
"""

from __future__ import annotations

import io
import json
import os
import signal

import numpy as np

import pytest

from helpers import WAIT_LIMIT, background, eventually, free_port, published, value

pytestmark = [pytest.mark.slow]  # serving stacks

NEVER_MS = str(WAIT_LIMIT * 10 * 1000)  # longer than any test waits: only a full batch (or a stop) sends it

RECORDING_MODEL = """
import os, uuid
import numpy as np

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def record(where, size):
    os.makedirs(os.path.join(BASE, where), exist_ok=True)
    with open(os.path.join(BASE, where, uuid.uuid4().hex), "w") as handle:
        handle.write(str(size))

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    data = np.asarray(data)
    assert data.ndim == 2, data.shape
    record("calls", len(data))
    return data * 10   # each row comes back times ten, in its place
"""

# input_fn marks each decoded request, so a test knows when requests wait in the batcher.
QUEUE_MARKING_MODEL = RECORDING_MODEL + """
from smsuper_default_codecs import decode

def input_fn(body, content_type):
    data = decode(body, content_type)
    record("decoded", len(data))
    return data
"""

# A batch hook for inputs that do not stack: one item fails alone.
BATCH_HOOK_MODEL = """
import os, uuid

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return "model"

def predict_batch_fn(inputs, model):
    os.makedirs(os.path.join(BASE, "calls"), exist_ok=True)
    with open(os.path.join(BASE, "calls", uuid.uuid4().hex), "w") as handle:
        handle.write(str(len(inputs)))
    return [ValueError("no name given") if "name" not in item else {"hello": item["name"]} for item in inputs]
"""


def calls(server) -> list:
    directory = server.base / "calls"
    if not directory.exists():
        return []
    return sorted(int((directory / name).read_text()) for name in os.listdir(directory))


def decoded(server) -> int:
    directory = server.base / "decoded"
    return len(os.listdir(directory)) if directory.exists() else 0


def batching(serve, code=RECORDING_MODEL, size="3", delay=NEVER_MS, **extra):
    server = serve(code=code, SAGEMAKER_MODEL_SERVER_WORKERS="1", SMSUPER_BATCH_SIZE=size,
                   SMSUPER_BATCH_DELAY_MS=delay, **extra)
    server.wait_ready()
    return server


def test_concurrent_requests_are_predicted_in_one_call_and_answered_with_their_own_rows(serve):
    server = batching(serve, size="3")
    bodies = [[[1, 2]], [[3, 4], [5, 6]], [[7, 8]]]
    pending = [background(lambda body=body: server.post(body)) for body in bodies]
    answers = [answer() for answer in pending]
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert [a.json() for a in answers] == [[[10, 20]], [[30, 40], [50, 60]], [[70, 80]]]
    assert calls(server) == [4]  # one call of the model for the three requests' four rows


def test_a_full_batch_does_not_wait_for_the_delay(serve):
    # The delay is longer than the test waits: the answers can only come from a full batch going at once.
    server = batching(serve, size="2")
    for round_ in range(2):
        pending = [background(lambda: server.post([[1.5, 2]])) for _ in range(2)]
        assert [a().json() for a in pending] == [[[15, 20]]] * 2
    assert calls(server) == [2, 2]


def test_a_malformed_request_fails_alone_and_the_others_share_a_batch(serve):
    server = batching(serve, size="2")
    good = [background(lambda: server.post("1,2\n3,4\n", "text/csv", Accept="text/csv")) for _ in range(2)]
    bad = server.post("[[1, 2]", "application/json")
    assert bad.status_code == 400 and "JSON" in bad.json()["error"], bad.text
    answers = [a() for a in good]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.text for a in answers] == ["10.0,20.0\n30.0,40.0\n"] * 2  # CSV decodes to floats
    assert calls(server) == [4]


def test_mixed_content_types_and_accepts_in_one_batch(serve):
    server = batching(serve, size="3")
    npy = io.BytesIO()
    np.save(npy, np.array([[5.0, 6.0]]))
    pending = [
        background(lambda: server.post("1,2\n", "text/csv", Accept="application/json")),
        background(lambda: server.post([[3, 4]], "application/json", Accept="text/csv")),
        background(lambda: server.post(npy.getvalue(), "application/x-npy", Accept="application/x-npy")),
    ]
    as_json, as_csv, as_npy = [a() for a in pending]
    assert as_json.headers["Content-Type"].startswith("application/json") and as_json.json() == [[10, 20]]
    assert as_csv.headers["Content-Type"].startswith("text/csv") and as_csv.text == "30.0,40.0\n"  # stacked with floats
    assert as_npy.headers["Content-Type"].startswith("application/x-npy")
    assert np.load(io.BytesIO(as_npy.content)).tolist() == [[50, 60]]
    assert calls(server) == [3]


def test_batch_size_one_is_no_batching(serve):
    server = batching(serve, size="1")
    assert server.post([[1, 2], [3, 4]]).json() == [[10, 20], [30, 40]]
    assert server.post([[5, 6]]).json() == [[50, 60]]
    assert calls(server) == [1, 2]  # one call per request, each with its own rows
    assert "batching" not in server.stderr().lower()


def test_a_batch_hook_gets_the_inputs_as_a_list_and_one_failed_item_fails_alone(serve):
    server = batching(serve, code=BATCH_HOOK_MODEL, size="2")
    named = background(lambda: server.post({"name": "ada"}))
    nameless = server.post({"nobody": True})
    assert named().json() == {"hello": "ada"}
    assert nameless.status_code == 500 and "predict_batch_fn" in nameless.json()["error"], nameless.text
    assert "no name given" in nameless.json()["error"]
    assert calls(server) == [2]


SUMMING_MODEL = """
def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    return [float(data.sum())]   # one number for the whole input: no row per row
"""


def test_a_prediction_without_a_row_per_row_fails_its_batch_and_says_why(serve):
    server = batching(serve, code=SUMMING_MODEL, size="2")
    pending = [background(lambda: server.post([[1, 2]])) for _ in range(2)]
    answers = [a() for a in pending]
    assert [a.status_code for a in answers] == [500, 500]
    message = answers[0].json()["error"]
    assert "predict_fn returned 1 row for a batch of 2 requests with 2 rows" in message, message
    assert "predict_batch_fn" in message  # the way out


SLOW_MODEL = """
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    if (data == 99).any():
        time.sleep(4)
        open(os.path.join(BASE, "slept"), "w").close()
    return data
"""


def test_a_slow_batch_gets_one_clear_504_for_each_request_and_the_worker_goes_on(serve):
    server = batching(serve, code=SLOW_MODEL, size="2", SAGEMAKER_MODEL_SERVER_TIMEOUT="2")
    slow = [background(lambda: server.post([[99, 0]])) for _ in range(2)]
    answers = [a() for a in slow]
    assert [a.status_code for a in answers] == [504, 504]
    assert all("SAGEMAKER_MODEL_SERVER_TIMEOUT=2" in a.json()["error"] for a in answers)
    # The worker's one dispatcher is busy with the slow batch until it returns, as a sync worker would be.
    eventually(lambda: (server.base / "slept").exists(), "the slow batch to end")
    after = [background(lambda: server.post([[1, 2]])) for _ in range(2)]
    assert [a().json() for a in after] == [[[1, 2]]] * 2


def test_sigterm_sends_a_waiting_batch_and_answers_it(serve):
    server = batching(serve, code=QUEUE_MARKING_MODEL, size="3",
                      files={"smsuper_default_codecs.py": CODECS_SHIM})
    pending = [background(lambda: server.post([[1, 1]])) for _ in range(2)]
    eventually(lambda: decoded(server) == 2, "two requests waiting for a third")
    assert server.ping().status_code == 200  # a waiting batch holds threads, not /ping
    os.kill(server.init_pid(), signal.SIGTERM)
    answers = [a() for a in pending]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json() for a in answers] == [[[10, 10]]] * 2
    assert calls(server) == [2]
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0, server.stderr()


def test_batching_is_measured(serve):

    port = free_port()
    server = batching(serve, size="2", SMSUPER_METRICS_PORT=str(port))
    pending = [background(lambda: server.post([[1, 2]])) for _ in range(2)]
    assert [a().status_code for a in pending] == [200, 200]
    samples = published(port, "smsuper_batch_size_count", 1)
    assert value(samples, "smsuper_batch_size_bucket", le="2.0") == 1
    assert value(samples, "smsuper_batch_size_bucket", le="1.0") == 0
    assert value(samples, "smsuper_batch_wait_seconds_count") == 2  # each request's wait for its batch


# A helper module next to the handler: the default decoder, as a user's input_fn would call it.
CODECS_SHIM = """
import json
import numpy as np

def decode(body, content_type):
    return np.asarray(json.loads(body), dtype=float)
"""


def test_a_users_own_wsgi_app_is_not_batched(serve, tmp_path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "echo_app.py").write_text(
        "def app(environ, start_response):\n"
        "    body = environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0))\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [body]\n")
    # With the batch delay beyond the test's patience, a lone request answered means it never waited for a batch.
    server = serve(cwd=program, SMSUPER_APP="echo_app:app", SAGEMAKER_MODEL_SERVER_WORKERS="1",
                   SMSUPER_BATCH_SIZE="4", SMSUPER_BATCH_DELAY_MS=NEVER_MS)
    server.wait_ready()
    assert server.post([[1, 2]]).json() == [[1, 2]]
    assert "batching" not in server.stderr().lower()
