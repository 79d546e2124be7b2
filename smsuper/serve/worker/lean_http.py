"""The HTTP nginx speaks to a keep-alive worker, read and answered without gunicorn's general parser.

gunicorn's RequestParser is written for any client: a BytesIO per read, a regex per
header, a dozen settings looked up per request, a WSGI errors wrapper built afresh for
each environ, and an answer written in two sends (its headers, then its body). nginx
sends one thing: `POST /invocations HTTP/1.1`, a handful of headers of plain tokens, and
a body with a Content-Length it has already read whole (proxy_request_buffering). For
that shape this module reads the head from the connection's own buffer, builds the WSGI
environ with the very keys and values gunicorn's wsgi.create gives, and writes the
answer's status line, headers and first body bytes with one sendall.

Anything outside that shape goes to gunicorn's parser unchanged, fed with the bytes
already read (`parse_head` returns None): a request line or header that is not plain
ASCII tokens, obsolete line folding, Transfer-Encoding (a chunked body), Expect
(100-continue), Upgrade (a WebSocket), a header name with "_", several Content-Lengths,
a body larger than LEAN_BODY_LIMIT (streamed to the app as it arrives), a head larger
than gunicorn's limits. So every error answer (400, 431, ...) is gunicorn's own, as
before, and the lean path never decides a request is malformed.
"""

from __future__ import annotations

import io
import os
import socket
from typing import Any, Dict, List, Optional, Tuple

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.errors import ConfigurationProblem

# A body up to this size is read whole before the app runs (it is usually in the first read
# already); a larger one goes to gunicorn's reader, which hands it to the app as it comes.
LEAN_BODY_LIMIT = 1024 * 1024
# gunicorn's own bounds on the request line (message.MAX_REQUEST_LINE) and on one read.
MAX_REQUEST_LINE = 8190
READ_SIZE = 65536
# A head still incomplete after this many bytes goes to gunicorn's parser, which reads on and
# answers it as it always did (nginx's own bound is 4 x 8 KiB: nginx.HEADER_BUFFERS).
HEAD_LIMIT = 65536
_VERSIONS = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}
# Headers gunicorn gives a meaning beyond the environ: its parser handles them.
_NOT_LEAN = frozenset((b"TRANSFER-ENCODING", b"EXPECT", b"UPGRADE"))
# What a request target and a header name may hold on the lean path: printable ASCII without
# space (a target), and letters, digits and "-" (a name), so that nothing in them reads
# differently to gunicorn's urlsplit, token regex or upper().
_NAME_CHARS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class LeanRequest:
    """What gunicorn's http.message.Request offers the worker, its hooks and handle_error."""

    __slots__ = ("method", "uri", "path", "query", "fragment", "version", "body", "content_length",
                 "must_close", "scheme", "proxy_protocol_info", "peer_addr", "remote_addr", "trailers",
                 "req_number", "environ", "host", "connection", "lines", "_headers")

    def __init__(self) -> None:
        self.must_close = False
        self.scheme = "http"
        self.proxy_protocol_info = None
        self.trailers: List[Tuple[str, str]] = []
        self.req_number = 1
        self._headers: Optional[List[Tuple[str, str]]] = None

    @property
    def headers(self) -> List[Tuple[str, str]]:
        """gunicorn's (NAME, value) list; made only when asked (by a hook, or an access log)."""
        if self._headers is None:
            self._headers = [((_names_of_text.get(raw) or _name(raw))[0], value.strip(" \t"))
                             for raw, _, value in (line.partition(":") for line in self.lines)]
        return self._headers

    def force_close(self) -> None:
        self.must_close = True

    def should_close(self) -> bool:
        """gunicorn's rule: the first Connection header decides, else the version."""
        if self.must_close:
            return True
        if self.connection is not None:
            value = self.connection.lower().strip(" \t")
            if value == "close":
                return True
            if value == "keep-alive":
                return False
        return self.version <= (1, 0)


# Header names as nginx sends them, each with its name in gunicorn's headers, its key in the
# environ and what it means to the parser, so that the usual few are not upper-cased and checked
# again for every request. Only names that passed the check are kept, and at most _NAMES_KEPT of
# them (a client sending ever new names must not grow it).
_PLAIN, _CONTENT_LENGTH, _CONTENT_TYPE, _HOST, _CONNECTION = range(5)
_KINDS = {"CONTENT-LENGTH": (_CONTENT_LENGTH, "CONTENT_LENGTH"), "CONTENT-TYPE": (_CONTENT_TYPE, "CONTENT_TYPE"),
          "HOST": (_HOST, "HTTP_HOST"), "CONNECTION": (_CONNECTION, "HTTP_CONNECTION")}
_names_of_text: Dict[str, Tuple[str, str, int]] = {}
_NAMES_KEPT = 256
_NO_NAME_CHARS = str.maketrans("", "", _NAME_CHARS)


def _name(raw: str) -> Optional[Tuple[str, str, int]]:
    name = raw.upper()
    if not name or not name.isascii() or name.translate(_NO_NAME_CHARS) or name.encode("ascii") in _NOT_LEAN:
        return None
    kind, key = _KINDS.get(name) or (_PLAIN, "HTTP_" + name.replace("-", "_"))
    known = (name, key, kind)
    if len(_names_of_text) < _NAMES_KEPT:
        _names_of_text[raw] = known
    return known


def parse_head(head: bytes, max_fields: int, max_field_size: int) -> Optional[LeanRequest]:
    """The request of this head (which ends with its blank line), or None when it is not of
    the shape nginx sends and gunicorn's parser must read it (see the module's docstring).
    The request's headers go into its `environ` as gunicorn's wsgi.create puts them there."""
    # Latin-1, as gunicorn decodes each line: a byte per character, so the checks below hold.
    lines = head[:-4].decode("latin-1").split("\r\n")
    count = len(lines) + 1
    # A lone CR or LF, or a NUL, anywhere: gunicorn's parser says what is wrong with it.
    if head.count(b"\r") != count or head.count(b"\n") != count or b"\0" in head:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or len(lines[0]) > MAX_REQUEST_LINE or count - 2 > max_fields:
        return None
    method, target, version = parts
    if not (3 <= len(method) <= 20 and method.isalpha() and method.isupper() and method.isascii()):
        return None
    if target[:1] != "/" or target[:2] == "//" or not target.isascii() or not target.isprintable() or " " in target:
        return None
    http_version = _VERSIONS.get(version)
    if http_version is None:
        return None
    del lines[0]
    environ: Dict[str, str] = {}
    content_length = host = connection = None
    names = _names_of_text
    for line in lines:
        raw, colon, value = line.partition(":")
        known = names.get(raw) or _name(raw)
        if known is None or not colon or (max_field_size and len(line) + 2 > max_field_size):
            return None
        value = value.strip(" \t")
        kind = known[2]
        if kind:
            if kind == _CONTENT_LENGTH:
                if content_length is not None or not value.isdigit() or not value.isascii():
                    return None
                content_length = int(value)
                environ["CONTENT_LENGTH"] = value
                continue
            if kind == _CONTENT_TYPE:  # of several the last counts, as in gunicorn
                environ["CONTENT_TYPE"] = value
                continue
            if kind == _HOST:
                host = value  # the last one
            elif connection is None:
                connection = value  # the first one decides (should_close)
        key = known[1]
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if content_length is not None and content_length > LEAN_BODY_LIMIT:
        return None
    req = LeanRequest()
    req.method = method
    req.uri = uri = target
    # urlsplit's split of an origin-form target: the fragment after the first "#", the query
    # after the first "?" before it.
    if "#" in uri:
        uri, _, req.fragment = uri.partition("#")
    else:
        req.fragment = ""
    req.path, _, req.query = uri.partition("?")
    req.version = http_version
    req.lines = lines
    req.environ = environ
    req.host = host
    req.connection = connection
    req.content_length = content_length or 0
    return req


class Reader:
    """A connection's bytes read ahead of the request being served (nginx never pipelines,
    so between requests this is normally empty)."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytes = b"") -> None:
        self.buf = buf

    def read_head(self, sock: socket.socket) -> Tuple[bytes, int]:
        """Reads until a whole head is buffered: (the buffer, where its head ends); the end is -1
        when the head outgrew HEAD_LIMIT first or the connection closed in the middle of one, and
        the buffer is b"" when it closed between requests."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > HEAD_LIMIT:
                return buf, -1
            data = sock.recv(READ_SIZE)
            if not data:
                return buf, -1
            buf += data
            end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))  # the new bytes, and 3 before
        return buf, end + 4  # the index after the head's blank line

    def read_body(self, sock: socket.socket, buf: bytes, start: int, length: int) -> Optional[bytes]:
        """The body of `length` bytes from buf[start:] on, reading the rest; None when the
        connection closed before it was all there. What follows it stays buffered."""
        end = start + length
        if len(buf) < end:
            chunks = [buf[start:]]
            missing = end - len(buf)
            while missing > 0:
                data = sock.recv(max(missing, READ_SIZE))
                if not data:
                    return None
                chunks.append(data)
                missing -= len(data)
            buf = b"".join(chunks)
            end = length
            start = 0
        self.buf = buf[end:]
        return buf[start:end]


class Environ:
    """The parts of the WSGI environ that are the same for every request of a worker,
    computed once (gunicorn builds them, the errors wrapper too, for each request)."""

    def __init__(self, cfg: Any) -> None:
        self.base: Dict[str, Any] = dict(wsgi.base_environ(cfg))
        self.base["wsgi.url_scheme"] = "http"
        self.script_name = os.environ.get("SCRIPT_NAME", "")
        self.servers: Dict[Any, Any] = {}

    def server_of(self, listener: Any) -> Any:
        """The listener's address as gunicorn's create() splits it (asked once per listener)."""
        server = self.servers.get(listener)
        if server is None:
            server = listener.getsockname()
            server = server.split(":") if isinstance(server, str) else list(server)
            self.servers[listener] = server
        return server

    def create(self, req: LeanRequest, body: bytes, sock: socket.socket, client: Any, listener: Any) -> Dict[str, Any]:
        """What gunicorn.http.wsgi.create gives for this request, key for key."""
        environ = self.base.copy()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["gunicorn.socket"] = sock
        environ["REQUEST_METHOD"] = req.method
        environ["QUERY_STRING"] = req.query
        environ["RAW_URI"] = req.uri
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if req.version == (1, 1) else "HTTP/1.0"
        environ.update(req.environ)
        host = req.host
        if isinstance(client, str):
            environ["REMOTE_ADDR"] = client
        elif isinstance(client, bytes):
            environ["REMOTE_ADDR"] = client.decode()
        else:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        server = self.server_of(listener)
        if len(server) == 1:  # a unix socket: the Host header names the server, as in gunicorn
            if host:
                server = host.split(":")
                if len(server) == 1:
                    server.append(80)
            else:
                server = [server[0], ""]
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
        path = req.path
        script_name = self.script_name
        if script_name:
            if not path.startswith(script_name):
                raise ConfigurationProblem(f"Request path {path!r} does not start with SCRIPT_NAME {script_name!r}")
            path = path[len(script_name):]
        environ["PATH_INFO"] = util.unquote_to_wsgi_str(path) if "%" in path else path
        environ["SCRIPT_NAME"] = script_name
        return environ


# What each header name of an answer means to gunicorn's Response (process_headers), by name.
_ANSWER_PLAIN, _ANSWER_LENGTH, _ANSWER_CONNECTION, _ANSWER_UPGRADE, _ANSWER_HOP = range(5)
_answer_names: Dict[str, int] = {}
_VALUE_CHARS = wsgi.HEADER_VALUE_RE.fullmatch


def _answer_kind(name: str) -> int:
    """Asked only of a name gunicorn's checks accepted."""
    lname = name.lower()
    if lname == "content-length":
        return _ANSWER_LENGTH
    if not util.is_hoppish(name):
        return _ANSWER_PLAIN
    return {"connection": _ANSWER_CONNECTION, "upgrade": _ANSWER_UPGRADE}.get(lname, _ANSWER_HOP)


class Response(wsgi.Response):
    """gunicorn's response (its header checks, framing and keep-alive rules), except that the
    status line and headers go out with the first body bytes, in one send: one system call
    and one wake-up of nginx fewer per answer. `headers_sent` still means "bytes of the answer
    reached the connection", so an app that fails before its first body bytes still gets
    gunicorn's 500 instead of a broken answer."""

    def process_headers(self, headers: List[Tuple[str, str]]) -> None:
        """gunicorn's checks and rules, with what a header name means remembered per name."""
        kinds = _answer_names
        for name, value in headers:
            kind = kinds.get(name) if type(name) is str else None
            if kind is None or type(value) is not str or not _VALUE_CHARS(value):
                super().process_headers([(name, value)])  # its TypeError or InvalidHeader(Name), or a new name
                if type(name) is str and len(kinds) < _NAMES_KEPT:
                    kinds[name] = _answer_kind(name)
                continue
            value = value.strip(" \t")
            if kind == _ANSWER_PLAIN:
                self.headers.append((name, value))
            elif kind == _ANSWER_LENGTH:
                self.response_length = int(value)
                self.headers.append((name, value))
            elif kind == _ANSWER_CONNECTION:
                if value.lower() == "upgrade":
                    self.upgrade = True
            elif kind == _ANSWER_UPGRADE:
                if value.lower() == "websocket":
                    self.headers.append((name, value))
            # any other hop-by-hop header is left out, as gunicorn does

    def _head(self) -> bytes:
        """default_headers() and the app's headers, as gunicorn's send_headers() joins them."""
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        major, minor = self.req.version
        head = (f"HTTP/{major}.{minor} {self.status}\r\nServer: {self.version}\r\n"
                f"Date: {util.http_date()}\r\nConnection: {connection}\r\n")
        if self.chunked:
            head += "Transfer-Encoding: chunked\r\n"
        return (head + "".join([f"{name}: {value}\r\n" for name, value in self.headers]) + "\r\n").encode("latin-1")

    def send_headers(self) -> None:
        if not self.headers_sent:
            self.sock.sendall(self._head())
            self.headers_sent = True

    def write(self, arg: bytes) -> None:
        if not isinstance(arg, bytes):
            raise TypeError(f"{arg!r} is not a byte")
        tosend = len(arg)
        if self.response_length is not None:
            if self.sent >= self.response_length:
                if not self.headers_sent:
                    self.send_headers()
                return  # never more than the Content-Length
            tosend = min(self.response_length - self.sent, tosend)
            if tosend < len(arg):
                arg = arg[:tosend]
        if self.chunked:
            if tosend == 0:  # an empty chunk would end the answer early
                if not self.headers_sent:
                    self.send_headers()
                return
            arg = b"%X\r\n%b\r\n" % (tosend, arg)
        self.sent += tosend
        if not self.headers_sent:
            arg = self._head() + arg
            self.headers_sent = True
        self.sock.sendall(arg)

    def close(self) -> None:
        if not self.headers_sent:
            self.sock.sendall(self._head() + (b"0\r\n\r\n" if self.chunked else b""))
            self.headers_sent = True
        elif self.chunked:
            self.sock.sendall(b"0\r\n\r\n")
