"""The HTTP a keep-alive worker reads and writes on its own socket (worker/lean_http.py).

nginx sends the workers one shape of request, which the worker reads itself; anything
else goes to gunicorn's parser. What a user would notice if that went wrong: an answer
that never comes (pipelined requests), a body cut or garbled (split reads, chunked
bodies, large bodies), a request gunicorn refused now accepted or answered differently,
an environ with other values than gunicorn gave the user's own WSGI app. These tests
speak raw HTTP to the gunicorn socket nginx uses, and to nginx, of a real stack.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import requests

from helpers import WAIT_LIMIT

pytestmark = [pytest.mark.slow]  # each test starts a serving stack

# A user WSGI app (style B) that answers with what it got: the environ's plain values, and the
# body's length and digest (read in pieces when it asks for that).
ECHO_APP = """
import hashlib, json

def app(environ, start_response):
    if environ["PATH_INFO"] == "/ping":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    stream = environ["wsgi.input"]
    if environ.get("HTTP_X_READ") == "lines":
        body = b"".join(stream)
    elif environ.get("HTTP_X_READ") == "none":
        body = b""
    else:
        body = stream.read()
    seen = {key: value for key, value in environ.items() if isinstance(value, str)}
    seen["body_length"] = len(body)
    seen["body_sha256"] = hashlib.sha256(body).hexdigest()
    answer = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
"""


@pytest.fixture
def echo(serve, tmp_path: Path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "echo_app.py").write_text(ECHO_APP)
    (tmp_path / "ml" / "model").mkdir(parents=True)
    server = serve(cwd=program, SMSUPER_APP="echo_app:app")
    server.wait_ready()
    server.socket_path = str(tmp_path / "run" / "shared" / "gunicorn.sock")
    return server


def _connect(server) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_LIMIT)
    sock.connect(server.socket_path)
    return sock


def _read_answer(sock: socket.socket, pending: bytearray) -> Tuple[int, dict, bytes]:
    """One answer from the connection (status, headers, body); bytes after it stay in `pending`."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"the connection closed before a whole answer: {bytes(pending)!r}")
        pending += data
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        pending[:] = rest
        return status, headers, b""
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    pending[:] = rest[length:]
    return status, headers, rest[:length]


def _exchange(server, *parts: bytes, answers: int = 1) -> List[Tuple[int, dict, bytes]]:
    """Sends each part with its own send (a short pause between, so the worker likely reads
    them apart; the answers must be the same either way), then reads `answers` answers."""
    with _connect(server) as sock:
        for index, part in enumerate(parts):
            if index:
                time.sleep(0.05)
            sock.sendall(part)
        pending = bytearray()
        return [_read_answer(sock, pending) for _ in range(answers)]


def _echoed(answer: Tuple[int, dict, bytes]) -> dict:
    status, _, body = answer
    assert status == 200, (status, body[:300])
    return json.loads(body)


def _post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: localhost", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_pipelined_requests_on_one_connection_are_all_answered_in_order(echo):
    # Three requests in one send: the worker reads them all at once, and no further byte
    # arrives to wake it up for the second and third.
    requests_ = b"".join(_post(f"/invocations?n={n}", b"x" * n) for n in (1, 2, 3))
    answers = _exchange(echo, requests_, answers=3)
    assert [(_echoed(a)["QUERY_STRING"], _echoed(a)["body_length"]) for a in answers] == \
           [("n=1", 1), ("n=2", 2), ("n=3", 3)]


def test_a_request_split_across_reads_gets_the_same_environ_as_one_sent_whole(echo):
    body = b'{"rows": [[1, 2, 3]]}'
    request = _post("/invocations?a=1&b=%C3%A9", body, "Content-Type: application/json", "X-Custom: one",
                    "X-Custom: two", "Accept: text/csv")
    whole = _echoed(_exchange(echo, request)[0])
    split = _echoed(_exchange(echo, request[:7], request[7:40], request[40:-5], request[-5:])[0])
    assert whole == split
    assert whole["REQUEST_METHOD"] == "POST" and whole["PATH_INFO"] == "/invocations"
    assert whole["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert whole["CONTENT_TYPE"] == "application/json" and whole["CONTENT_LENGTH"] == str(len(body))
    assert whole["HTTP_X_CUSTOM"] == "one,two"  # gunicorn's way of joining repeated headers
    assert whole["HTTP_ACCEPT"] == "text/csv"
    assert (whole["SERVER_NAME"], whole["SERVER_PORT"]) == ("localhost", "80")
    assert whole["wsgi.url_scheme"] == "http" and whole["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert whole["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_percent_encoded_path_reaches_the_app_decoded(echo):
    seen = _echoed(_exchange(echo, _post("/caf%C3%A9/x%20y?q=%20", b""))[0])
    assert seen["PATH_INFO"] == "/caf\u00c3\u00a9/x y"  # WSGI: the bytes, as latin-1
    assert seen["RAW_URI"] == "/caf%C3%A9/x%20y?q=%20" and seen["QUERY_STRING"] == "q=%20"


def test_a_chunked_body_sent_to_the_worker_is_reassembled(echo):
    chunks = [b"a" * 10, b"b" * 300, b"c"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    head = b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    first, second = _exchange(echo, head + body[:15], body[15:] + _post("/invocations?after", b"xyz"), answers=2)
    assert _echoed(first)["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (_echoed(second)["QUERY_STRING"], _echoed(second)["body_length"]) == ("after", 3)


def test_a_chunked_body_sent_to_nginx_reaches_the_app_whole(echo):
    def pieces():
        yield b"[1, 2"
        yield b", 3]"

    answer = requests.post(echo.url("/invocations"), data=pieces(), timeout=WAIT_LIMIT,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert answer.json()["body_sha256"] == hashlib.sha256(b"[1, 2, 3]").hexdigest()


def test_a_body_larger_than_what_is_read_at_once_arrives_whole_and_the_next_request_too(echo):
    big = bytes(range(256)) * 8192  # 2 MiB: beyond the size the worker reads whole first
    for how in ("all", "lines"):
        first, second = _exchange(echo, _post("/invocations", big, f"X-Read: {how}") + _post("/invocations?2", b"ok"),
                                  answers=2)
        assert (_echoed(first)["body_length"], _echoed(first)["body_sha256"]) == (len(big), hashlib.sha256(big).hexdigest())
        assert (_echoed(second)["QUERY_STRING"], _echoed(second)["body_length"]) == ("2", 2)


def test_a_body_the_app_never_reads_does_not_spill_into_the_next_request(echo):
    first, second = _exchange(echo, _post("/invocations", b"GET /evil HTTP/1.1\r\n\r\n", "X-Read: none")
                              + _post("/invocations?next", b"1"), answers=2)
    assert _echoed(first)["body_length"] == 0
    assert _echoed(second)["QUERY_STRING"] == "next"


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent(echo):
    with _connect(echo) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        pending = bytearray()
        assert _read_answer(sock, pending)[0] == 100
        sock.sendall(b"data")
        assert _echoed(_read_answer(sock, pending))["body_length"] == 4


def test_an_http_1_0_request_is_answered_and_its_connection_closed(echo):
    with _connect(echo) as sock:
        sock.sendall(_post("/invocations", b"abc", version="1.0"))
        pending = bytearray()
        status, headers, body = _read_answer(sock, pending)
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert sock.recv(100) == b""  # closed by the worker


def test_a_request_line_longer_than_nginx_allows_is_still_gunicorns_to_judge(echo):
    # gunicorn, told to allow any request line (master/gunicorn_app.py), answered it: still so.
    path = "/invocations?q=" + "x" * 9000
    assert _echoed(_exchange(echo, _post(path, b""))[0])["QUERY_STRING"] == "q=" + "x" * 9000


@pytest.mark.parametrize("name, request_bytes, status", [
    ("a request line of two words", b"POST /invocations\r\nHost: x\r\n\r\n", 400),
    ("an unknown HTTP version", b"POST /invocations HTTP/2.5\r\nHost: x\r\n\r\n", 400),
    ("a space in a header name", b"POST /invocations HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    ("a folded header line", b"POST /invocations HTTP/1.1\r\nX-A: 1\r\n  more\r\n\r\n", 400),
    ("a lone CR in a header", b"POST /invocations HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n", 400),
    ("two Content-Lengths", b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("a Content-Length that is not a number", b"POST /invocations HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
    ("an unknown transfer coding", b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: zip\r\n\r\n", 501),
])
def test_what_gunicorn_refused_it_still_refuses_with_its_status(echo, name, request_bytes, status):
    assert _exchange(echo, request_bytes)[0][0] == status, name


def test_a_header_name_with_an_underscore_is_dropped_as_gunicorn_does(echo):
    seen = _echoed(_exchange(echo, _post("/invocations", b"", "X_Sneaky: 1", "X-Plain: 2"))[0])
    assert "HTTP_X_SNEAKY" not in seen and seen["HTTP_X_PLAIN"] == "2"
