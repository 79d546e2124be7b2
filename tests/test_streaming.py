"""Streamed answers through real nginx and gunicorn: a handler that produces an iterator is
answered chunk by chunk, and every other answer keeps its Content-Length (async endpoints).

Each model is gated on files the test creates, so what the test sees depends on what the
server did, never on how fast it did it; the time limits are safety nets against a hang.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
import urllib3

from helpers import WAIT_LIMIT, background, eventually, host_pid, parse, scrape, serving_with_metrics, value

pytestmark = [pytest.mark.slow]  # serving stacks

CHUNKS = 100

# chunk i is produced only once the test has acknowledged chunk i-1 (file ack-<i-1>).
GATED_CHUNKS = f"""
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def wait_for(name, limit=120):
    deadline = time.time() + limit
    while not os.path.exists(os.path.join(BASE, name)) and time.time() < deadline:
        time.sleep(0.005)

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    def chunks():
        for i in range({CHUNKS}):
            if i:
                wait_for(f"ack-{{i - 1}}")
            open(os.path.join(BASE, f"made-{{i}}"), "w").close()
            yield f"chunk {{i:03d}}\\n"
    return chunks()
"""


def test_a_generator_of_100_chunks_arrives_chunk_by_chunk(serve):
    server = serve(GATED_CHUNKS)
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={}, stream=True, timeout=WAIT_LIMIT)
    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    assert "X-Accel-Buffering" not in response.headers  # nginx's own header stays inside
    for i in range(CHUNKS):
        assert response.raw.read(10) == f"chunk {i:03d}\n".encode()
        # Chunk i reached the client before chunk i+1 was made: the gate is still shut.
        assert not (server.base / f"made-{i + 1}").exists()
        (server.base / f"ack-{i}").touch()
    assert response.raw.read() == b""  # a normal end: the terminating chunk came
    assert server.terminate() == 0


FORMATS = """
from smsuper.serve.worker.streaming import Event, jsonlines, sse

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    items = [{"token": "a"}, "two\\nlines", Event({"done": True}, event="end", id="3")]
    if data["format"] == "sse":
        return sse(iter(items))
    if data["format"] == "jsonlines":
        return jsonlines(iter([{"token": "a"}, [1, 2], "s"]))
    return (item for item in [{"token": "a"}, "plain"])   # the default output_fn frames it
"""


def test_sse_and_jsonlines_helpers_and_the_default_framing(serve):
    server = serve(FORMATS)
    server.wait_ready()
    answer = server.post({"format": "sse"})
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/event-stream"
    assert answer.text == ('data: {"token":"a"}\n\n'
                           'data: two\ndata: lines\n\n'
                           'event: end\nid: 3\ndata: {"done":true}\n\n')
    answer = server.post({"format": "jsonlines"})
    assert answer.headers["Content-Type"] == "application/jsonlines"
    assert answer.text == '{"token":"a"}\n[1,2]\n"s"\n'
    # A bare generator with the default output_fn: Accept picks the framing.
    answer = server.post({"format": "bare"}, Accept="text/event-stream")
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert answer.text == 'data: {"token":"a"}\n\ndata: plain\n\n'
    answer = server.post({"format": "bare"}, Accept="application/jsonlines")
    assert answer.text == '{"token":"a"}\n"plain"\n'
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    assert server.terminate() == 0


ENDLESS = """
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    if data.get("quick"):
        return {"quick": True}
    def forever():
        try:
            while True:
                yield b"tick\\n"
                time.sleep(0.01)
        finally:
            open(os.path.join(BASE, "finally-ran"), "w").close()
    return forever()
"""


def test_a_client_gone_mid_stream_closes_the_generator_and_frees_the_worker(serve):
    server = serve(ENDLESS, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={}, stream=True, timeout=WAIT_LIMIT)
    assert response.raw.read(5) == b"tick\n"
    response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # the client goes away
    response.close()
    eventually(lambda: (server.base / "finally-ran").exists(), "the generator's finally to run")
    # The one worker is free again.
    answer = server.post({"quick": True})
    assert answer.status_code == 200 and answer.json() == {"quick": True}
    assert server.terminate() == 0


FAILING = """
from smsuper.serve.worker.streaming import sse

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    if data.get("quick"):
        return {"quick": True}
    def tokens():
        yield {"token": 1}
        yield {"token": 2}
        raise ValueError("the model broke at token 3")
    def lines():
        for n in [1, 2, 0, 4]:
            yield b"%d\\n" % (n * n // n)   # 0: ZeroDivisionError
    return sse(tokens()) if data["format"] == "sse" else lines()
"""


def _read_until_broken(response: requests.Response) -> bytes:
    """What arrived before the body broke; fails if it ended normally."""
    received = b""
    with pytest.raises((urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError)):
        for piece in response.raw.stream(1, decode_content=False):
            received += piece
    return received


def test_an_exception_mid_stream_cuts_the_body_and_is_logged_once(serve):
    server = serve(FAILING, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={"format": "sse"}, stream=True, timeout=WAIT_LIMIT)
    received = _read_until_broken(response)
    assert received == (b'data: {"token":1}\n\ndata: {"token":2}\n\n'
                        b'event: error\ndata: {"error":"ValueError: the model broke at token 3"}\n\n')
    response = requests.post(server.url("/invocations"), json={"format": "plain"}, stream=True,
                             timeout=WAIT_LIMIT)
    assert _read_until_broken(response) == b"1\n2\n"
    assert server.post({"quick": True}).json() == {"quick": True}  # the worker lives on
    eventually(lambda: server.stderr().count("ZeroDivisionError") >= 2, "the second failure's log")
    log = server.stderr()
    # Each failure once, with its traceback: the message line and the traceback's last line.
    assert log.count("Traceback (most recent call last)") == 2, log
    assert log.count("ValueError: the model broke at token 3") == 2, log
    assert "the stream failed after 2 chunks" in log
    assert server.terminate() == 0


STEADY = """
import time

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    def steady():
        began = time.monotonic()
        count = 0
        # Past the worker timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT + 5 s), a chunk every 0.2 s.
        while time.monotonic() - began < data["seconds"]:
            yield b"."
            count += 1
            time.sleep(0.2)
        yield b"done after %d chunks" % count
    return steady()
"""


def test_a_stream_may_outlast_the_request_timeout_while_chunks_keep_coming(serve):
    server = serve(STEADY, SAGEMAKER_MODEL_SERVER_TIMEOUT="2", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    answer = server.post({"seconds": 9})  # the gunicorn worker timeout is 7 s
    assert answer.status_code == 200
    assert answer.content.lstrip(b".").startswith(b"done after"), answer.content[-200:]
    assert "killed" not in server.stderr() and "WORKER TIMEOUT" not in server.stderr()
    assert server.terminate() == 0


def test_the_total_bound_stops_a_stream(serve):
    server = serve(STEADY, SMSUPER_STREAM_TIMEOUT="1", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={"seconds": 600}, stream=True,
                             timeout=WAIT_LIMIT)
    assert set(_read_until_broken(response)) == {ord(".")}
    eventually(lambda: "SMSUPER_STREAM_TIMEOUT=1 s" in server.stderr(), "the cut in the log")
    assert server.terminate() == 0


GATED_STREAM = """
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    def chunks():
        yield b"first\\n"
        open(os.path.join(BASE, "streaming"), "w").close()
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(BASE, "open")) and time.time() < deadline:
            time.sleep(0.01)
        yield b"last\\n"
    return chunks()
"""


def test_sigterm_lets_a_running_stream_finish_and_ping_stays_up_meanwhile(serve):
    server, metrics_port = serving_with_metrics(serve, code=GATED_STREAM, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    pending = background(lambda: requests.post(server.url("/invocations"), json={}, timeout=WAIT_LIMIT))
    eventually(lambda: (server.base / "streaming").exists(), "the stream to start")
    ping = server.ping()
    assert ping is not None and ping.status_code == 200  # the only worker is streaming
    eventually(lambda: value(parse(scrape(metrics_port)), "smsuper_streams_in_flight") == 1,
               "the stream in flight in the metrics")
    os.kill(server.init_pid(), signal.SIGTERM)
    eventually(lambda: "SIGTERM" in server.stderr(), "smsuper to take the SIGTERM")
    (server.base / "open").touch()
    answer = pending()
    assert answer.status_code == 200 and answer.content == b"first\nlast\n"
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0, server.stderr()


def test_stream_metrics(serve):
    server, metrics_port = serving_with_metrics(serve, code=FORMATS)
    answer = server.post({"format": "jsonlines"})
    assert answer.status_code == 200

    def published() -> bool:
        samples = parse(scrape(metrics_port))
        return value(samples, "smsuper_stream_chunks_total") == 3
    eventually(published, "the stream's chunks in the metrics")
    samples = parse(scrape(metrics_port))
    assert value(samples, "smsuper_stream_bytes_total") == len(answer.content)
    assert value(samples, "smsuper_stream_first_byte_seconds_count") == 1
    assert value(samples, "smsuper_stream_duration_seconds_count") == 1
    assert value(samples, "smsuper_streams_in_flight") == 0
    assert server.terminate() == 0


# ---- what async endpoints need: a Content-Length on every answer that is not streamed ----------

ANSWERS = """
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    while not os.path.exists(os.path.join(BASE, "load")):
        time.sleep(0.01)
    return None

def input_fn(body, content_type):
    if content_type not in ("application/json", "application/octet-stream"):
        from smsuper.serve.worker.errors import UnsupportedContentType
        raise UnsupportedContentType("no " + content_type)
    return body

def predict_fn(data, model):
    if data == b"die":
        os._exit(1)
    if data == b"slow":
        time.sleep(30)
    if data == b"fail":
        raise RuntimeError("user code failed")
    return data

def output_fn(prediction, accept):
    if accept == "text/html":
        from smsuper.serve.worker.errors import NotAcceptable
        raise NotAcceptable("no html")
    return prediction if isinstance(prediction, bytes) else prediction.encode()
"""


def _raw(port: int, request: bytes) -> bytes:
    """The head of the answer to a request sent as these very bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_LIMIT) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    return received.split(b"\r\n\r\n", 1)[0]


def _head_of(server, method: str, path: str, body: bytes = b"", **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_LIMIT)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, response.headers


def test_every_answer_that_is_not_streamed_has_a_content_length(serve):
    server = serve(ANSWERS, loaded=False, SAGEMAKER_MODEL_SERVER_TIMEOUT="2", SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    # /ping while no worker has loaded the model: nginx's 503 from a file.
    eventually(lambda: server.ping() is not None, "nginx to answer")
    status, answer_headers = _head_of(server, "GET", "/ping")
    assert status == 503 and answer_headers.get("Content-Length") is not None
    (server.base / "load").touch()
    server.wait_ready()
    octet = {"Content-Type": "application/octet-stream"}
    cases = [
        ("GET", "/ping", b"", {}, 200),
        ("HEAD", "/ping", b"", {}, 200),
        ("POST", "/invocations", b"hello", octet, 200),
        ("POST", "/invocations", b"fail", octet, 500),
        ("POST", "/invocations", b"x", {"Content-Type": "text/csv"}, 415),
        ("POST", "/invocations", b"x", {**octet, "Accept": "text/html"}, 406),
        ("POST", "/invocations", b"x" * (1024 * 1024 + 1), octet, 413),
        ("POST", "/invocations", b"slow", octet, 504),
        ("POST", "/invocations", b"die", octet, 502),
        ("GET", "/invocations", b"", {}, 405),
        ("OPTIONS", "/ping", b"", {}, 405),
        ("GET", "/execution-parameters", b"", {}, 200),
        ("HEAD", "/execution-parameters", b"", {}, 200),
        ("GET", "/nowhere", b"", {}, 404),
        ("GET", "/" + "a" * 9000, b"", {}, 414),
        ("GET", "/ping", b"", {"X-Big": "b" * 9000}, 431),
    ]
    for method, path, body, headers, status in cases:
        got, answer_headers = _head_of(server, method, path, body, **headers)
        assert got == status, (method, path[:40], got)
        assert answer_headers.get("Content-Length") is not None, (method, path[:40], status)
        assert answer_headers.get("Transfer-Encoding") is None, (method, path[:40], status)
        assert len(str(answer_headers)) < 4096
    # Malformed HTTP, answered by nginx before any route.
    for request in (b"NOT HTTP\r\n\r\n", b"GET /ping HTTP/1.1\r\n\r\n", b"GET /ping HTTP/2.5\r\nHost: x\r\n\r\n"):
        head = _raw(server.port, request).lower()
        assert b"\r\ncontent-length: " in head and b"transfer-encoding" not in head, head
    assert server.terminate() == 0


HUNDRED_MIB = 100 * 1024 * 1024

LARGE = f"""
def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    if body == b"answer":
        return bytes({HUNDRED_MIB}), "application/octet-stream"
    return str(len(body)), "text/plain"
"""


def test_a_100_mib_request_and_a_100_mib_answer_with_content_length(serve, tmp_path):
    server = serve(LARGE, SAGEMAKER_MAX_PAYLOAD_IN_MB="1024", SAGEMAKER_MODEL_SERVER_TIMEOUT="3600",
                   SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(HUNDRED_MIB)  # sparse: no 100 MiB in the test's memory or on disk
    with open(big, "rb") as body:
        answer = requests.post(server.url("/invocations"), data=body, timeout=WAIT_LIMIT * 3,
                               headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200 and answer.text == str(HUNDRED_MIB)
    response = requests.post(server.url("/invocations"), data=b"answer", stream=True, timeout=WAIT_LIMIT * 3,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(HUNDRED_MIB)
    assert "Transfer-Encoding" not in response.headers
    received = sum(len(piece) for piece in response.iter_content(1 << 20))
    assert received == HUNDRED_MIB
    assert server.terminate() == 0


SILENT = """
import time

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    def chunks():
        yield b"first\\n"
        time.sleep(60)   # silent for longer than SAGEMAKER_MODEL_SERVER_TIMEOUT
        yield b"never\\n"
    return chunks()
"""


def test_a_gap_between_chunks_longer_than_the_request_timeout_cuts_the_stream(serve):
    server = serve(SILENT, SAGEMAKER_MODEL_SERVER_TIMEOUT="2")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={}, stream=True, timeout=WAIT_LIMIT)
    assert _read_until_broken(response) == b"first\n"
    assert server.terminate() == 0


FLASK_STREAM = """
import os, time
from flask import Flask, Response, stream_with_context

BASE = os.environ["SAGEMAKER_BASE_DIR"]
app = Flask(__name__)

@app.route("/ping")
def ping():
    return ""

@app.route("/invocations", methods=["POST"])
def invocations():
    def chunks():
        for i in range(5):
            if i:
                deadline = time.time() + 120
                while not os.path.exists(os.path.join(BASE, f"ack-{i - 1}")) and time.time() < deadline:
                    time.sleep(0.005)
            yield f"part {i}\\n"
    return Response(stream_with_context(chunks()), content_type="text/plain")

@app.route("/sized", methods=["POST"])
def sized():
    return "whole"
"""


def test_a_style_b_app_streams_with_stream_with_context(serve, tmp_path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "streamer.py").write_text(FLASK_STREAM)
    server = serve(cwd=program, SMSUPER_APP="streamer:app")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), data=b"x", stream=True, timeout=WAIT_LIMIT)
    assert response.headers.get("Transfer-Encoding") == "chunked"
    for i in range(5):
        assert response.raw.read(7) == f"part {i}\n".encode()  # before part i+1 was made
        (server.base / f"ack-{i}").touch()
    assert response.raw.read() == b""
    assert server.terminate() == 0


FLOOD = """
import os

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return None

def predict_fn(data, model):
    with open(os.path.join(BASE, "worker-pid"), "w") as handle:
        handle.write(str(os.getpid()))
    def flood():
        try:
            for _ in range(1024):   # 64 MiB: more than every buffer between here and the client
                yield bytes(65536)
            open(os.path.join(BASE, "all-made"), "w").close()
        finally:
            open(os.path.join(BASE, "finally-ran"), "w").close()
    return flood()
"""


def _waits_in_send(pid: int) -> bool:
    """Whether the process's main thread is blocked writing to a full socket."""
    try:
        with open(f"/proc/{pid}/wchan") as handle:
            return handle.read().strip() in ("sock_alloc_send_pskb", "sk_stream_wait_memory", "unix_wait_for_peer")
    except OSError:
        return False


def test_a_client_that_stops_reading_holds_the_generator_back(serve):
    # nginx passes a stream on unbuffered: it does not absorb the stream into its buffers and temp
    # files, so a client that stops reading stops the generator (at a full socket) instead of
    # letting it run to its end.
    server = serve(FLOOD, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    server.wait_ready()
    response = requests.post(server.url("/invocations"), json={}, stream=True, timeout=WAIT_LIMIT)
    assert len(response.raw.read(65536)) == 65536
    worker = host_pid(int((server.base / "worker-pid").read_text()), server.init_pid())
    eventually(lambda: _waits_in_send(worker), "the worker to wait for room in a full socket")
    assert not (server.base / "all-made").exists()
    response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
    response.close()
    eventually(lambda: (server.base / "finally-ran").exists(), "the generator's finally to run")
    assert not (server.base / "all-made").exists()
    assert server.terminate() == 0
