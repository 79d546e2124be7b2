"""Bidirectional streams (the platform's InvokeEndpointWithBidirectionalStream): a WebSocket on the
serving port, through real nginx and gunicorn, answered by the handler module's stream_fn.

The client is the `websockets` library (its sync API), never hand-made frames: text, binary,
fragmented and 1 MiB messages come back byte for byte and as one message each; pings get their
pong; the close codes of both sides reach the other; a raising stream_fn closes with 1011; the
query string reaches the handler; SIGTERM lets an open stream finish, then closes it with 1001;
20 streams stay open while /invocations and /ping keep answering; the per-worker bound, the path
setting, and the route as plain HTTP.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from helpers import WAIT_LIMIT, eventually, host_pid, serving_with_metrics, wait_counted

pytestmark = [pytest.mark.slow]  # serving stacks

PATH = "/invocations-bidirectional-stream"

# stream_fn answers each message by what it says; anything else is echoed as it came.
# After the messages end (the client closed, or the server stops), it records that in
# `input-ended` and, when the test asked for it with "hold", waits for the file `release`.
STREAMING_MODEL = r"""
import os, time

from smsuper.serve.errors import CloseStream

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    return data

def stream_fn(model, messages, context):
    hold = False
    try:
        for message in messages:
            if message == "query":
                yield context.query_string
            elif message == "header":
                yield context.header("X-Test-Header") or ""
            elif message == "pid":
                yield str(os.getpid())
            elif message == "close me":
                raise CloseStream(4000, "asked to close")
            elif message == "raise":
                raise ValueError("the handler failed on purpose")
            elif message == "a dict":
                yield {"not": "a message"}
            elif message == "end":
                return
            elif message == "hold":
                hold = True
                yield "holding"
            else:
                yield message
        with open(os.path.join(BASE, "input-ended"), "w"):
            pass
        if hold:
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(BASE, "release")) and time.time() < deadline:
                time.sleep(0.01)
            yield "finished"
    finally:
        with open(os.path.join(BASE, "closed-%d-%d" % (os.getpid(), id(messages))), "w"):
            pass
"""


def ws_url(server, path: str = PATH) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def open_stream(server, path: str = PATH, **options):
    return connect(ws_url(server, path), proxy=None, ping_interval=None, open_timeout=WAIT_LIMIT,
                   close_timeout=WAIT_LIMIT, max_size=None, **options)


def closed_by_server(ws) -> ConnectionClosed:
    """The ConnectionClosed the next recv() raises (what the server's Close said)."""
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT_LIMIT)
    return closed.value


@pytest.fixture()
def streaming(serve):
    server = serve(STREAMING_MODEL)
    server.wait_ready()
    return server


def test_messages_come_back_byte_for_byte_one_message_each(streaming):
    rng = random.Random(16)
    one_mib = rng.randbytes(1 << 20)
    one_mib_text = "".join(rng.choice("aé€𝄞\x00\n ") for _ in range(600_000))  # over 1 MiB of UTF-8, 1-4 bytes a char
    with open_stream(streaming) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT_LIMIT) == "hello"
        ws.send(b"\x00\xff\x80binary\r\n")
        assert ws.recv(timeout=WAIT_LIMIT) == b"\x00\xff\x80binary\r\n"
        ws.send("")
        assert ws.recv(timeout=WAIT_LIMIT) == ""
        ws.send(b"")
        assert ws.recv(timeout=WAIT_LIMIT) == b""
        # Fragmented messages arrive at the handler whole; each answer is a single frame.
        ws.send(["frag", "mé", "nted"])
        assert list(ws.recv_streaming()) == ["fragménted"]
        ws.send([b"\x01\x02", b"", b"\x03"])
        assert list(ws.recv_streaming()) == [b"\x01\x02\x03"]
        ws.send(one_mib)
        assert ws.recv(timeout=WAIT_LIMIT) == one_mib
        ws.send(one_mib_text)
        assert len(one_mib_text.encode()) > 1 << 20
        assert ws.recv(timeout=WAIT_LIMIT) == one_mib_text
        # A ping gets its pong, with the same payload.
        assert ws.ping(b"are you there").wait(WAIT_LIMIT)


def test_the_query_string_and_headers_reach_the_handler(streaming):
    with open_stream(streaming, PATH + "?model=a%20b&x=1&x=2",
                     additional_headers={"X-Test-Header": "from the client"}) as ws:
        ws.send("query")
        assert ws.recv(timeout=WAIT_LIMIT) == "model=a%20b&x=1&x=2"
        ws.send("header")
        assert ws.recv(timeout=WAIT_LIMIT) == "from the client"


def test_close_codes_reach_the_other_side(streaming):
    # The handler's CloseStream: its code and reason reach the client.
    with open_stream(streaming) as ws:
        ws.send("close me")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (4000, "asked to close")
    # stream_fn returns: 1000.
    with open_stream(streaming) as ws:
        ws.send("end")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1000
    # The client closes with its own code: the server echoes it, and the handler's messages end.
    before = set(os.listdir(streaming.base))
    with open_stream(streaming) as ws:
        ws.send("ping-pong")
        assert ws.recv(timeout=WAIT_LIMIT) == "ping-pong"
        ws.close(4321, "client is done")
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4321
    eventually(lambda: "input-ended" in os.listdir(streaming.base) and
               any(name.startswith("closed-") for name in set(os.listdir(streaming.base)) - before),
               "the handler to see the end of its messages and finish")
    # The client vanishes without a Close: the same end for the handler.
    before = set(os.listdir(streaming.base))
    (streaming.base / "input-ended").unlink()
    with open_stream(streaming) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT_LIMIT) == "hello"
        ws.socket.shutdown(socket.SHUT_RDWR)
        eventually(lambda: "input-ended" in os.listdir(streaming.base) and
                   any(name.startswith("closed-") for name in set(os.listdir(streaming.base)) - before),
                   "the handler of a vanished client to finish")


def test_a_handler_that_raises_closes_with_1011_and_a_reason(streaming):
    with open_stream(streaming) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT_LIMIT) == "hello"
        ws.send("raise")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        assert closed.rcvd.reason == "stream_fn raised ValueError: the handler failed on purpose"
    with open_stream(streaming) as ws:
        ws.send("a dict")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1011 and "yield str" in closed.rcvd.reason
    eventually(lambda: "Traceback" in streaming.stderr() + streaming.stdout() and
               "the handler failed on purpose" in streaming.stderr() + streaming.stdout(),
               "the traceback in the log")
    # The worker serves on.
    assert streaming.post([1, 2]).json() == [1, 2]


def test_sigterm_lets_an_open_stream_finish_then_closes_it_with_1001(streaming):
    with open_stream(streaming) as ws:
        ws.send("hold")
        assert ws.recv(timeout=WAIT_LIMIT) == "holding"
        os.kill(streaming.init_pid(), 15)
        # The server stops taking messages: the handler's loop ends, and it is still running.
        eventually(lambda: (streaming.base / "input-ended").exists(), "the handler's messages to end")
        assert ws.ping(b"still open").wait(WAIT_LIMIT)
        (streaming.base / "release").touch()
        assert ws.recv(timeout=WAIT_LIMIT) == "finished"
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert closed.rcvd.reason == "the server is stopping"
    assert streaming.proc.wait(timeout=WAIT_LIMIT) == 0


def test_a_stream_still_running_at_the_stop_deadline_is_closed_with_1001(serve):
    # Grace period 8 s: streams get until G - 7 = 1 s after the stop; this one never finishes.
    server = serve(STREAMING_MODEL, SMSUPER_GRACE_PERIOD="8")
    server.wait_ready()
    with open_stream(server) as ws:
        ws.send("hold")
        assert ws.recv(timeout=WAIT_LIMIT) == "holding"
        os.kill(server.init_pid(), 15)
        closed = closed_by_server(ws)  # no "finished": the handler is still waiting for `release`
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1001, "the server is stopping")
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0
    assert "still running at the stop deadline: closed with 1001" in server.stderr() + server.stdout()


def test_twenty_streams_stay_open_while_invocations_and_ping_answer(streaming):
    with contextlib.ExitStack() as opened:
        streams = [opened.enter_context(open_stream(streaming, PATH + f"?n={n}")) for n in range(20)]
        for n, ws in enumerate(streams):
            ws.send(f"first {n}")
        for n, ws in enumerate(streams):
            assert ws.recv(timeout=WAIT_LIMIT) == f"first {n}"
        # Every stream is open; requests are answered all the same (2 workers, 20 streams).
        for n in range(10):
            assert streaming.post({"n": n}).json() == {"n": n}
            assert requests.get(streaming.url("/ping"), timeout=WAIT_LIMIT).status_code == 200
        # Each stream is answered at once however many others are open, from either worker.
        pids = set()
        for n, ws in enumerate(streams):
            ws.send("pid")
            pids.add(ws.recv(timeout=WAIT_LIMIT))
            ws.send(bytes([n]) * 1000)
            assert ws.recv(timeout=WAIT_LIMIT) == bytes([n]) * 1000
        assert pids  # the pids of the workers serving them


def test_the_route_as_plain_http(streaming):
    plain = requests.get(streaming.url(PATH), timeout=WAIT_LIMIT)
    assert plain.status_code == 426 and plain.headers["Upgrade"] == "websocket"
    assert "Upgrade: websocket" in plain.json()["error"]
    wrong = requests.post(streaming.url(PATH), data=b"x", timeout=WAIT_LIMIT)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET"


def test_the_bound_per_worker_the_path_setting_and_the_message_limit(serve):
    server = serve(STREAMING_MODEL, SAGEMAKER_MODEL_SERVER_WORKERS="1", SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER="2",
                   SMSUPER_BIDIRECTIONAL_STREAM_PATH="/my/stream", SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    server.wait_ready()
    with pytest.raises(InvalidStatus) as moved:
        open_stream(server)
    assert moved.value.response.status_code == 404
    with open_stream(server, "/my/stream") as first, open_stream(server, "/my/stream") as second:
        with pytest.raises(InvalidStatus) as refused:
            open_stream(server, "/my/stream")
        assert refused.value.response.status_code == 503 and refused.value.response.headers["Retry-After"] == "1"
        assert b"SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER" in refused.value.response.body
        # A message over SAGEMAKER_MAX_PAYLOAD_IN_MB closes its stream with 1009; the other is unharmed.
        first.send(b"x" * ((1 << 20) + 1))
        closed = closed_by_server(first)
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        second.send(b"y" * (1 << 20))
        assert second.recv(timeout=WAIT_LIMIT) == b"y" * (1 << 20)
    # The closed streams' places are free again.
    def reopened() -> bool:
        try:
            with open_stream(server, "/my/stream") as again:
                again.send("back")
                return again.recv(timeout=WAIT_LIMIT) == "back"
        except InvalidStatus:
            return False
    eventually(reopened, "a stream to open once the others closed")


def test_a_module_without_stream_fn_refuses_the_handshake_saying_why(serve):
    server = serve("def model_fn(model_dir):\n    return 'model'\n")
    server.wait_ready()
    with pytest.raises(InvalidStatus) as refused:
        open_stream(server)
    assert refused.value.response.status_code == 501
    assert b"defines no stream_fn(model, messages, context)" in refused.value.response.body


def test_gthread_workers_refuse_a_stream_saying_why(serve):
    server = serve(STREAMING_MODEL, SMSUPER_WORKER_THREADS="2")
    server.wait_ready()
    with pytest.raises(InvalidStatus) as refused:
        open_stream(server)
    assert refused.value.response.status_code == 501
    assert b"SMSUPER_WORKER_THREADS > 1" in refused.value.response.body
    assert server.post([3]).json() == [3]


def test_a_worker_killed_with_a_stream_open_drops_only_its_streams(streaming):

    with open_stream(streaming) as doomed:
        doomed.send("pid")
        worker = int(doomed.recv(timeout=WAIT_LIMIT))
        os.kill(host_pid(worker, streaming.init_pid()), 9)
        closed = closed_by_server(doomed)
        assert closed.rcvd is None  # no Close frame: the connection just ended (1006 on the client's side)
    # A new stream is served (by the other worker, or the replacement) and so are requests.
    def served() -> bool:
        try:
            with open_stream(streaming) as fresh:
                fresh.send("again")
                return fresh.recv(timeout=WAIT_LIMIT) == "again"
        except (InvalidStatus, ConnectionClosed):
            return False
    eventually(served, "a stream to be served after the kill")
    assert streaming.post([9]).json() == [9]


def test_a_reload_closes_the_old_workers_streams_with_1001_and_new_ones_open(streaming):
    with open_stream(streaming) as old:
        old.send("hello")
        assert old.recv(timeout=WAIT_LIMIT) == "hello"
        os.kill(streaming.init_pid(), 1)  # SIGHUP: new workers, then the old ones retire
        closed = closed_by_server(old)
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1001, "the server is stopping")
    with open_stream(streaming) as fresh:
        fresh.send("after the reload")
        assert fresh.recv(timeout=WAIT_LIMIT) == "after the reload"
    assert streaming.post([4]).json() == [4]


def test_pid1_counts_each_stream_under_its_route_once_it_ended(serve):

    server, metrics_port = serving_with_metrics(serve, code=STREAMING_MODEL)
    for _ in range(2):
        with open_stream(server) as ws:
            ws.send("end")
            closed_by_server(ws)
    plain = requests.get(server.url(PATH), timeout=WAIT_LIMIT)
    assert plain.status_code == 426
    expected = {(PATH, "101"): 2, (PATH, "426"): 1}
    counts = wait_counted(metrics_port, expected)
    assert {key: counts[key] for key in expected} == expected
