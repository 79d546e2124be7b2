"""Stateful sessions (SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true): a store per session, in files.

The platform's side: a request with `X-Amzn-SageMaker-Session-Id: NEW_SESSION`
creates a session, its answer carries `X-Amzn-SageMaker-New-Session-Id: ID;
Expires=2026-01-01T00:00:00Z`, and later requests with `X-Amzn-SageMaker-Session-Id:
ID` reach the same instance. AWS's container-standards library also takes the
session requests as bodies, and so does this module:

  header NEW_SESSION, any body      a session is made, then the handler runs with it
  body {"requestType": "NEW_SESSION"}   a session is made; the handler does not run
  header ID, body {"requestType": "CLOSE"}  the session is closed: its store is
                                    freed, the answer says X-Amzn-SageMaker-Closed-Session-Id
  header ID, any other body         the handler runs with the session (context.session)

An id is hostile input: only ids of the form this module issues (a UUID, lower
case) are looked up, so no header ever names a path. An unknown, closed or
expired id is a 400 that says so.

The store lives in the servers' part of the runtime directory, so every worker
sees every session and a worker's restart loses none: SESSIONS/ID/ holds
`expires` (the Unix time it ends), `values/` (one JSON file per key, read and
written at each access, each write a new file renamed into place) and `files/`
(the handler's own). A session appears whole (made under a temporary name,
then renamed) and goes whole (renamed away, then removed). Each worker sweeps
expired sessions on a timer of its own, without waiting for a request.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from typing import Any, Callable, Iterator, List, Optional

from ... import log
from .errors import ServeError
from .seam import JSON, Answer, Request

HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION = "NEW_SESSION"
CLOSE = "CLOSE"
NEW_HEADER = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
_ENVIRON_KEY = "HTTP_" + HEADER.upper().replace("-", "_")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
# A session request's body is tiny; anything longer is an ordinary request.
_REQUEST_BODY_MAX = 256
_KEY_MAX = 150  # bytes of a key: its file name (base64, .json) stays under 255


class SessionError(ServeError):
    """A session header or request that cannot be served: what is wrong and what to send."""

    status = 400


def _expires_text(expires: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))


def _key_file(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a session key is a str, not {type(key).__name__}")
    raw = key.encode("utf-8")
    if len(raw) > _KEY_MAX:
        raise ValueError(f"a session key may have at most {_KEY_MAX} bytes")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") + ".json"


def _key_of(name: str) -> str:
    encoded = name[:-len(".json")]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")


def _write_new(path: str, data: bytes) -> None:
    """`data` into a new file at `path` (never an existing file or a link), then nothing else."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


class Session:
    """What a handler gets as `context.session`: a store of JSON values by key, shared by
    every worker (each access reads or writes its file), and a directory for files of its own."""

    def __init__(self, directory: str, session_id: str, expires: float):
        self.id = session_id
        self.expires = expires  # Unix time
        self._directory = directory
        self._values = os.path.join(directory, "values")
        self.path = os.path.join(directory, "files")

    @property
    def expires_at(self) -> str:
        return _expires_text(self.expires)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return json.loads(_read(os.path.join(self._values, _key_file(key))))
        except FileNotFoundError:
            return default

    def __getitem__(self, key: str) -> Any:
        missing = object()
        found = self.get(key, missing)
        if found is missing:
            raise KeyError(key)
        return found

    def __setitem__(self, key: str, value: Any) -> None:
        data = json.dumps(value).encode("utf-8")  # before any file is touched: a bad value costs nothing
        final = os.path.join(self._values, _key_file(key))
        temporary = os.path.join(self._values, f".new-{secrets.token_hex(8)}")
        _write_new(temporary, data)
        os.replace(temporary, final)

    def __delitem__(self, key: str) -> None:
        try:
            os.unlink(os.path.join(self._values, _key_file(key)))
        except FileNotFoundError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return os.path.exists(os.path.join(self._values, _key_file(key)))

    def keys(self) -> List[str]:
        return sorted(_key_of(name) for name in os.listdir(self._values)
                      if name.endswith(".json") and not name.startswith("."))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"Session({self.id!r}, expires={self.expires_at})"


class SessionStore:
    """Every session of this server, in `directory`."""

    def __init__(self, directory: str, expiration: int):
        self.directory = directory
        self.expiration = expiration
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._sweeper: Optional[threading.Thread] = None

    # ---- lifecycle -------------------------------------------------------------------
    def create(self) -> Session:
        session_id = str(uuid.uuid4())
        expires = float(int(time.time()) + self.expiration)
        building = os.path.join(self.directory, f".new-{session_id}")
        os.mkdir(building, 0o700)
        os.mkdir(os.path.join(building, "values"), 0o700)
        os.mkdir(os.path.join(building, "files"), 0o700)
        _write_new(os.path.join(building, "expires"), str(int(expires)).encode("ascii"))
        final = os.path.join(self.directory, session_id)
        os.rename(building, final)
        return Session(final, session_id, expires)

    def open(self, session_id: str) -> Session:
        """The session of a request's header, or a SessionError saying what is wrong with it."""
        if not _ID.match(session_id):
            shown = session_id if len(session_id) <= 64 else session_id[:64] + "..."
            raise SessionError(f"{HEADER} must be {NEW_SESSION} or the id of a session this server made (a "
                               f"lower-case UUID as {NEW_HEADER} gave it); got {shown!r}")
        directory = os.path.join(self.directory, session_id)
        try:
            expires = float(_read(os.path.join(directory, "expires")).decode("ascii"))
        except (OSError, ValueError):
            raise SessionError(f"no session {session_id}: it was closed, has expired (sessions last "
                               f"SAGEMAKER_SESSIONS_EXPIRATION={self.expiration} s) or never existed; "
                               f"start a new one with {HEADER}: {NEW_SESSION}") from None
        if time.time() >= expires:
            self.remove(session_id)
            raise SessionError(f"session {session_id} expired at {_expires_text(expires)} (sessions last "
                               f"SAGEMAKER_SESSIONS_EXPIRATION={self.expiration} s); start a new one with "
                               f"{HEADER}: {NEW_SESSION}")
        return Session(directory, session_id, expires)

    def remove(self, session_id: str) -> bool:
        """Free a session's store; False when another worker got there first."""
        gone = os.path.join(self.directory, f".gone-{session_id}-{secrets.token_hex(4)}")
        try:
            os.rename(os.path.join(self.directory, session_id), gone)
        except FileNotFoundError:
            return False
        shutil.rmtree(gone, ignore_errors=True)
        return True

    def sweep(self) -> int:
        """Remove every expired session (and leftovers of interrupted creates and removes)."""
        now = time.time()
        removed = 0
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.startswith(".gone-") or (name.startswith(".new-") and _older_than(path, 60)):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not _ID.match(name):
                continue
            try:
                expires = float(_read(os.path.join(path, "expires")).decode("ascii"))
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, ValueError):
                expires = 0.0  # unreadable: nothing can use it
            if now >= expires and self.remove(name):
                removed += 1
        return removed

    def start_sweeping(self) -> None:
        """A thread that sweeps every quarter of the expiration (1 s to 60 s)."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        interval = max(1.0, min(60.0, self.expiration / 4))

        def sweep_forever() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.sweep()
                except OSError as error:
                    log.warning(f"sweeping expired sessions in {self.directory}: {error}")

        self._sweeper = threading.Thread(target=sweep_forever, name="smsuper-sessions", daemon=True)
        self._sweeper.start()


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError:
        return False


def _session_request(request: Request) -> Optional[str]:
    """NEW_SESSION or CLOSE when the body is a session request of the container-standards form."""
    content_type = (request.content_type or JSON).split(";")[0].strip().lower()
    if content_type != JSON:
        return None
    body = request.body
    if len(body) > _REQUEST_BODY_MAX or b"requestType" not in body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or "requestType" not in parsed:
        return None
    if set(parsed) != {"requestType"} or parsed["requestType"] not in (NEW_SESSION, CLOSE):
        raise SessionError('a session request\'s body is {"requestType": "NEW_SESSION"} or '
                           '{"requestType": "CLOSE"} and nothing else')
    return parsed["requestType"]


def serve(store: SessionStore, request: Request, invoke: Callable[[Optional[Session]], Answer]) -> Answer:
    """One /invocations with sessions on: `invoke(session)` runs the handler."""
    value = request.environ.get(_ENVIRON_KEY)
    kind = _session_request(request)
    if value is None and kind is None:
        return invoke(None)
    if value is not None:
        value = value.strip()
    if value == NEW_SESSION or (value is None and kind == NEW_SESSION):
        if kind == CLOSE:
            raise SessionError(f"a CLOSE request names the session to close in {HEADER}")
        session = store.create()
        made = (NEW_HEADER, f"{session.id}; Expires={session.expires_at}")
        if kind == NEW_SESSION:
            body = json.dumps({"session_id": session.id, "expires": session.expires_at}).encode("utf-8")
            return Answer(body, JSON, headers=[made])
        try:
            answer = invoke(session)
        except BaseException:
            store.remove(session.id)  # the client never learnt its id
            raise
        answer.headers = [*answer.headers, made]
        return answer
    if value is None:
        raise SessionError(f"a CLOSE request names the session to close in {HEADER}")
    if kind == NEW_SESSION:
        raise SessionError(f"a NEW_SESSION request cannot also name a session in {HEADER}")
    session = store.open(value)
    if kind == CLOSE:
        store.remove(session.id)
        body = json.dumps({"closed_session_id": session.id}).encode("utf-8")
        return Answer(body, JSON, headers=[(CLOSED_HEADER, session.id)])
    return invoke(session)
