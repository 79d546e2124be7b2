"""Every part of gunicorn that smsuper leans on beyond its documented API, in one list.

gunicorn documents its settings, its server hooks and `BaseApplication`; the draining arbiter
and the worker hooks (master/gunicorn_app.py) and the keep-alive worker
(worker/keepalive_worker.py) also use its internals: the arbiter's worker table and loop
chores, the workers' attributes, the HTTP parser and response. None of that is promised to stay. The list below is checked against the
gunicorn bundled into the pyz by tests/test_gunicorn_private.py, which also fails as soon as the
pin in pyproject.toml differs from VERIFIED_WITH: a new gunicorn means reading this list again
against its source (and its changelog), then updating VERIFIED_WITH.

No process imports this module (it sits beside master/ and worker/, whose code it describes);
it is the reference to read before moving the pin.
"""

# The gunicorn release this list was checked against: pyproject.toml pins the same.
VERIFIED_WITH = "23.0.0"

# (where it lives, its name, its parameters when smsuper calls or overrides it (None: an
# attribute, or a callable whose parameters are not relied on), what smsuper does with it).
RELIED_ON = (
    # ---- the arbiter: DrainingArbiter in master/gunicorn_app.py ----------------------------------
    ("gunicorn.arbiter.Arbiter", "run", (), "started by ServeApplication.run instead of BaseApplication.run"),
    ("gunicorn.arbiter.Arbiter", "handle_term", (), "overridden: drains behind nginx first; raising "
     "StopIteration is how a handler ends the arbiter's main loop"),
    ("gunicorn.arbiter.Arbiter", "stop", ("graceful",), "overridden: marks exits from then on as not restarts"),
    ("gunicorn.arbiter.Arbiter", "reload", (), "overridden: SIGHUP keeps the old workers until the new are ready"),
    ("gunicorn.arbiter.Arbiter", "manage_workers", (), "overridden: spawns the new generation during a reload"),
    ("gunicorn.arbiter.Arbiter", "reap_workers", (), "called while handle_term drains (the main loop is paused)"),
    ("gunicorn.arbiter.Arbiter", "murder_workers", (), "called while handle_term drains"),
    ("gunicorn.arbiter.Arbiter", "spawn_worker", (), "called by the overridden manage_workers"),
    ("gunicorn.arbiter.Arbiter", "kill_worker", ("pid", "sig"), "retires the old generation after a reload"),
    ("gunicorn.arbiter.Arbiter", "WORKERS", None, "the live workers, pid -> worker (reload, GPU choice)"),
    ("gunicorn.arbiter.Arbiter", "num_workers", None, "how many workers the arbiter keeps"),
    ("gunicorn.arbiter.Arbiter", "app", None, "the ServeApplication (its config, runtime dir, nginx pidfile)"),
    ("gunicorn.arbiter.Arbiter", "cfg", None, "cfg.set('graceful_timeout', ...) once the drain took its share"),
    ("gunicorn.config.Config", "set", ("name", "value"), "settings changed at run time"),
    ("gunicorn.config.Config", "settings", None, "the names this gunicorn knows (unknown options are skipped)"),
    # ---- a worker, as the server hooks and the keep-alive worker see it ----------------------
    ("gunicorn.workers.base.Worker", "alive", None, "False once the worker was told to stop"),
    ("gunicorn.workers.base.Worker", "notify", (), "the heartbeat while the model loads"),
    ("gunicorn.workers.base.Worker", "pid", None, "readiness marker, metrics"),
    ("gunicorn.workers.base.Worker", "ppid", None, "post_fork: the master died before the worker ran"),
    ("gunicorn.workers.base.Worker", "nr", None, "requests served: recycled or not (worker_exit)"),
    ("gunicorn.workers.base.Worker", "max_requests", None, "with jitter applied (worker_exit, keep-alive worker)"),
    ("gunicorn.workers.base.Worker", "aborted", None, "set by the arbiter when it kills a timed-out worker"),
    ("gunicorn.workers.base.Worker", "sockets", None, "the listeners the keep-alive worker accepts on"),
    ("gunicorn.workers.base.Worker", "PIPE", None, "the worker's wakeup pipe, selected on with the listeners"),
    ("gunicorn.workers.base.Worker", "timeout", None, "the keep-alive worker's select timeout"),
    ("gunicorn.workers.base.Worker", "cfg", None, "settings and the pre/post_request hooks"),
    ("gunicorn.workers.base.Worker", "log", None, "the worker's logger"),
    ("gunicorn.workers.base.Worker", "wsgi", None, "the loaded application"),
    ("gunicorn.workers.base.Worker", "handle_error", ("req", "client", "addr", "exc"),
     "answers 400/500 for what the parser or the app raised"),
    ("gunicorn.workers.base.Worker", "init_process", (),
     "overridden: the keep-alive worker forks its guard (worker/rescue.py) before the app loads"),
    ("gunicorn.workers.base.Worker", "tmp", None, "the heartbeat file the guard watches (its fd)"),
    ("gunicorn.workers.base.Worker", "handle_winch", ("sig", "fname"),
     "overridden: the worker's SIGWINCH handler (installed by init_signals) asks open streams to stop"),
    ("gunicorn.workers.sync.SyncWorker", "run", (), "replaced whole by KeepAliveWorker.run"),
    ("gunicorn.workers.sync.SyncWorker", "is_parent_alive", (), "the keep-alive worker's loop exits with the master"),
    ("gunicorn.workers.sync.SyncWorker", "handle_request", ("listener", "req", "client", "addr"),
     "KeepAliveWorker._handle_request is this method, except the connection may stay open"),
    ("gunicorn.config.Config", "pre_request", None, "called around each request, as SyncWorker does"),
    ("gunicorn.config.Config", "post_request", None, "called around each request, as SyncWorker does"),
    ("gunicorn.config.Config", "keepalive", None, "idle connections older than this are closed"),
    ("gunicorn.config.Config", "accesslog", None, "whether an access log is asked for"),
    ("gunicorn.config.Config", "logconfig", None, "whether an access log is asked for"),
    ("gunicorn.config.Config", "logconfig_dict", None, "whether an access log is asked for"),
    ("gunicorn.config.Config", "syslog", None, "whether an access log is asked for"),
    # ---- HTTP: the parser and the response the keep-alive worker drives ----------------------
    ("gunicorn.http.RequestParser", "__init__", ("cfg", "source", "source_addr"), "one parser per kept connection"),
    ("gunicorn.http.unreader.Unreader", "buf", None, "bytes read ahead: a connection with any is not handed over"),
    ("gunicorn.http.parser.Parser", "unreader", None, "the parser's buffer (see buf)"),
    ("gunicorn.http.wsgi", "create", ("req", "sock", "client", "server", "cfg"), "the WSGI environ and response"),
    ("gunicorn.http.wsgi.Response", "force_close", (), "the last request a worker serves closes its connection"),
    ("gunicorn.http.wsgi.Response", "should_close", (), "whether the connection may be kept"),
    ("gunicorn.http.wsgi.Response", "headers_sent", None, "an answer that had begun is broken off, not replaced"),
    ("gunicorn.http.wsgi.Response", "write_file", ("respiter",), "wsgi.file_wrapper answers"),
    ("gunicorn.http.wsgi.Response", "start_response", None, "passed to the app"),
    ("gunicorn.http.errors", "NoMoreData", None, "the peer closed the connection between requests"),
    ("gunicorn.http.unreader.Unreader", "unread", ("data",), "a request the lean reader passes on: the bytes read so far"),
    ("gunicorn.http.wsgi", "base_environ", ("cfg",), "the environ keys every request of a worker shares (lean_http)"),
    ("gunicorn.http.wsgi.Response", "__init__", ("req", "sock", "cfg"), "lean_http.Response is a subclass"),
    ("gunicorn.http.wsgi.Response", "default_headers", (), "the status line, Server, Date, Connection (lean_http)"),
    ("gunicorn.http.wsgi.Response", "send_headers", (), "overridden: the head goes out with the first body bytes"),
    ("gunicorn.http.wsgi.Response", "write", ("arg",), "overridden: the same framing, one send with the head"),
    ("gunicorn.http.wsgi.Response", "close", (), "overridden: the same end, one send with the head"),
    ("gunicorn.http.wsgi.Response", "response_length", None, "the Content-Length the app set (lean_http)"),
    ("gunicorn.http.wsgi.Response", "chunked", None, "whether the answer is chunked (lean_http)"),
    ("gunicorn.http.wsgi.Response", "sent", None, "body bytes written so far (lean_http)"),
    ("gunicorn.http.errors", "ConfigurationProblem", None, "a path outside SCRIPT_NAME, as gunicorn's create() raises"),
    ("gunicorn.config.PreRequest", "default", None, "gunicorn's own pre_request hook, skipped unless logging at debug"),
    ("gunicorn.config.PostRequest", "default", None, "gunicorn's own post_request hook (it does nothing), skipped"),
    ("gunicorn.config.Config", "is_ssl", None, "the lean reader serves plain HTTP only"),
    ("gunicorn.config.Config", "proxy_protocol", None, "the lean reader does not read PROXY lines"),
    ("gunicorn.config.Config", "secure_scheme_headers", None, "the lean reader has no scheme headers (none behind nginx)"),
    ("gunicorn.config.Config", "limit_request_fields", None, "beyond it a request goes to gunicorn's parser"),
    ("gunicorn.config.Config", "limit_request_field_size", None, "beyond it a request goes to gunicorn's parser"),
    ("gunicorn.util", "unquote_to_wsgi_str", ("string",), "PATH_INFO of a percent-encoded path (lean_http)"),
    ("gunicorn.util", "http_date", ("timestamp",), "replaced: the Date header formatted once a second"),
    ("gunicorn.util", "close_on_exec", ("fd",), "sockets taken over from another worker"),
    ("gunicorn.util", "close", ("sock",), "closing a connection"),
    # ---- logging: JsonLogger in master/gunicorn_app.py ---------------------------------
    ("gunicorn.glogging.Logger", "setup", ("cfg",), "overridden: JSON lines when SMSUPER_LOG_FORMAT=json"),
    ("gunicorn.glogging.Logger", "error_log", None, "its handlers get the JSON formatter"),
    ("gunicorn.glogging.Logger", "access", ("resp", "req", "environ", "request_time"),
     "the access log line, when one is asked for"),
)

# Set on an object of the first module's class by code in the second (not in the class itself).
ASSIGNED_ELSEWHERE = {
    ("gunicorn.workers.base.Worker", "aborted"): "gunicorn.arbiter",
}
