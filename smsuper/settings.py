"""Every setting smsuper reads, declared once.

Each `Setting` names its environment variable (and any older names still
honoured, its aliases: the declared name wins), how its text is parsed (which
also validates it, and whose `accepts` says in words what it takes), its
default (and a job's own default where one differs: `job_defaults`) and a
one-line doc. This table drives value parsing, `--help` and the README's
settings table (`python -m smsuper.settings --markdown` prints it), so the
three can never disagree. Code reads a setting's value only through `value()`.

Bad values fail at start (`validate`) with a message that names the variable
and says what it accepts, instead of surfacing later as a confusing crash.
"""

from __future__ import annotations

import json
import os
import re
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple


class SettingError(ValueError):
    """A setting holds a value its parser refuses; the message says what to do."""


class Setting:
    # A plain class, not a dataclass: importing dataclasses costs PID 1 ~3 MB.
    __slots__ = ("name", "parse", "default", "doc", "jobs", "default_doc", "aliases", "job_defaults")

    def __init__(self, name: str, parse: Parser, default: Any, doc: str,
                 jobs: Tuple[str, ...] = ("all",), default_doc: Optional[str] = None,
                 aliases: Tuple[str, ...] = (), job_defaults: Optional[Dict[str, Any]] = None):
        self.name = name
        self.parse = parse
        self.default = default
        self.doc = doc
        # Which jobs read it: used to validate only what the chosen job needs and
        # to group the --help output. "all" means every job.
        self.jobs = jobs
        # Shown instead of the default's text when the default is computed at run time.
        self.default_doc = default_doc
        # Older names still honoured, read only when `name` itself is unset (it wins).
        self.aliases = aliases
        # A job whose default differs from `default` ("command": a command run like tini).
        self.job_defaults = job_defaults or {}

    @property
    def accepts(self) -> str:
        return self.parse.accepts

    def default_for(self, job: Optional[str]) -> Any:
        return self.job_defaults.get(job, self.default) if job else self.default

    def shown_name(self) -> str:
        if not self.aliases:
            return f"`{self.name}`"
        return f"`{self.name}` (or {', '.join(f'`{alias}`' for alias in self.aliases)})"

    def shown_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if not self.job_defaults:
            return _shown(self.default)
        groups: Dict[str, list] = {}  # each default with the jobs that have it, in JOBS' order
        for job in JOBS:
            groups.setdefault(_shown(self.default_for(job)), []).append(JOB_NAMES.get(job, job))
        return ", ".join(f"{shown} for {' and '.join(jobs)}" for shown, jobs in groups.items())


# The jobs a setting can name (see __main__.py); how the defaults column calls them.
JOBS = ("train", "serve", "command")
JOB_NAMES = {"command": "other commands"}


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---- parsers -----------------------------------------------------------------
# A parser turns the variable's text into the value or raises ValueError; its `accepts`
# says what it takes, in words, for errors, --help and the README (so they cannot disagree).

class Parser:
    __slots__ = ("parse", "accepts")

    def __init__(self, parse: Callable[[str], Any], accepts: str):
        self.parse = parse
        self.accepts = accepts

    def __call__(self, text: str) -> Any:
        return self.parse(text)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


_boolean = Parser(_parse_boolean, "true or false (also 1/0, yes/no, on/off)")


def _bounds(low: Optional[float], high: Optional[float]) -> str:
    if high is None:
        return f" >= {low:g}" if low is not None else ""
    return f" {low:g}-{high:g}" if low is not None else f" <= {high:g}"


def _integer(low: Optional[int] = None, high: Optional[int] = None, what: str = "an integer") -> Parser:
    def parse(text: str) -> int:
        value = int(text.strip())
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(text)
        return value

    return Parser(parse, what + _bounds(low, high))


def _port(low: int = 1) -> Parser:
    return _integer(low, 65535, "a port number")


def _number(low: float = 0.0, what: str = "a number of seconds") -> Parser:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not value >= low or value != value or value == float("inf"):
            raise ValueError(text)
        return value

    return Parser(parse, what + _bounds(low, None))


def _choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        for option in options:
            if option.lower() == lowered:
                return option
        raise ValueError(text)

    return Parser(parse, ", ".join(options[:-1]) + " or " + options[-1])


def _parse_signal(text: str) -> Optional[int]:
    """A signal by name (SIGINT, INT) or number; empty: unset."""
    import signal

    word = text.strip().upper()
    if not word:
        return None
    if word.isdigit():
        number = int(word)
    else:
        found = getattr(signal, word if word.startswith("SIG") else "SIG" + word, None)
        if not isinstance(found, signal.Signals) or found.name.startswith("SIG_"):
            raise ValueError(text)
        number = int(found)
    if not 1 <= number < signal.NSIG or number in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        raise ValueError(text)
    return number


_signal = Parser(_parse_signal, "a signal name (SIGINT, INT) or number other than SIGKILL, SIGSTOP and SIGCHLD")


def _parse_exit_codes(text: str) -> Tuple[int, ...]:
    codes = []
    for word in text.replace(",", " ").split():
        code = int(word)
        if not 0 <= code <= 255:
            raise ValueError(text)
        codes.append(code)
    return tuple(codes)


_exit_codes = Parser(_parse_exit_codes, "exit codes 0-255, comma- or space-separated")


def _text(meaning: str) -> Parser:
    """Any text, empty too (an empty one is not unset): `meaning` says what it names."""
    return Parser(_as_is, meaning)


def _as_is(text: str) -> str:
    return text


def _nonempty(meaning: str) -> Parser:
    return Parser(_parse_nonempty, meaning)


def _parse_nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text.strip()


def _parse_port_range(text: str) -> Optional[Tuple[int, int]]:
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text)
    if not match:
        raise ValueError(text)
    low, high = int(match.group(1)), int(match.group(2))
    if not (1 <= low <= high <= 65535):
        raise ValueError(text)
    return (low, high)


_port_range = Parser(_parse_port_range, "LOW-HIGH, ports 1-65535 with LOW <= HIGH")

_STREAM_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
# The platform's other routes (serve/routes.py) and nginx's internal locations.
_TAKEN_PATHS = ("/ping", "/invocations", "/execution-parameters")


def _parse_stream_path(text: str) -> str:
    path = text.strip()
    if not _STREAM_PATH.fullmatch(path) or path in _TAKEN_PATHS or path.startswith("/_smsuper"):
        raise ValueError(text)
    return path


_stream_path = Parser(_parse_stream_path, "a path of letters, digits and ._~- segments, not /ping, "
                                          "/invocations or /execution-parameters")

_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*(\(\))?)?$")


def _module_attr(what: str) -> Parser:
    return Parser(_parse_module_attr, f"module:{what}, module:{what}() or a module alone, in dotted names")


def _parse_module_attr(text: str) -> Optional[str]:
    if not text.strip():
        return None
    if not _MODULE_ATTR.match(text.strip()):
        raise ValueError(text)
    return text.strip()


def _parse_metric_definitions(text: str) -> list:
    if not text.strip():
        return []
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("not a list")
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("Name"), str) and isinstance(item.get("Regex"), str)):
            raise ValueError("each item needs a Name and a Regex string")
        re.compile(item["Regex"])
    return value


_metric_definitions = Parser(_parse_metric_definitions,
                             'a JSON list such as [{"Name": "train:loss", "Regex": "loss=([0-9.]+)"}]')


# ---- the table ---------------------------------------------------------------
# In the README's order: what every job reads, the user's code, training, serving.

_DECLARED: Iterable[Setting] = (
    # -- every job, or the jobs a setting names
    Setting("SMSUPER_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info",
            "Lowest level of smsuper's own messages (on stderr). A pass-through command's terminal shows only "
            "the command's output unless something is wrong, as under tini.",
            job_defaults={"command": "warning"}),
    Setting("SMSUPER_LOG_FORMAT", _choice("text", "json"), "text",
            "`json` writes smsuper's own messages and nginx's access log as JSON lines."),
    # Each inside the platform's (or docker's) time between SIGTERM and SIGKILL: 120 s for
    # training, 30 s for endpoints, `docker stop`'s 10 s for anything else.
    Setting("SMSUPER_GRACE_PERIOD", _number(0.0), 8.0,
            "Seconds between the graceful stop signal and SIGKILL of every remaining process.",
            job_defaults={"train": 110.0, "serve": 25.0}),
    Setting("SMSUPER_STOP_SIGNAL", _signal, None,
            "Signal the command or training program gets instead of the stop signal PID 1 received (SIGTERM or "
            "SIGINT), and when smsuper stops it on its own; the grace period and SIGKILL still follow. Not for "
            "serve: nginx and gunicorn always get the signal that drains them.",
            jobs=("command", "train"), default_doc="(unset): the received signal, SIGTERM for smsuper's own stops"),
    Setting("SMSUPER_SUCCESS_EXIT_CODES", _exit_codes, (),
            "Exit codes of the command or training program that count as success: smsuper exits 0 (and train "
            "writes no failure file). 128+N means death by signal N, so 143 covers SIGTERM as well.",
            jobs=("command", "train"), default_doc="(unset)"),
    Setting("SMSUPER_CACHE_DIR", _text("a directory path"), "",
            "Where the pyz unpacks its libraries (with compiled bytecode and setproctitle's extension).",
            default_doc="/var/cache/smsuper if writable, else $XDG_CACHE_HOME/smsuper or ~/.cache/smsuper, else /tmp/smsuper-cache-UID"),
    Setting("SMSUPER_PYZ", _text("a path to smsuper.pyz"), "",
            "The pyz smsuper starts its own helper processes from (the gunicorn master, the code download); "
            "for a launcher that hides the archive's path.",
            default_doc="the archive this process runs from"),
    Setting("SMSUPER_USER", _nonempty("a user name, a uid, or uid:gid"), "nobody",
            "Account every workload runs as when smsuper starts as root (`root` keeps uid 0, discouraged)."),
    Setting("SMSUPER_ALLOW_PRIVILEGED", _boolean, False,
            "Start even in a privileged container (the platform never runs one)."),
    Setting("SMSUPER_METRICS_PORT", _port(0), 9464,
            "Port of the Prometheus endpoint served by PID 1; 0 turns it off. Other commands open no port "
            "unless it (or SAGEMAKER_SAFE_PORT_RANGE) is set: a shell or a tool run under the init has nothing to report but process figures, "
            "and a port nobody asked for could clash with the command's own.",
            default_doc="train and serve: 9464, or the first port of SAGEMAKER_SAFE_PORT_RANGE; other commands: off"),
    Setting("SAGEMAKER_SAFE_PORT_RANGE", _port_range, None,
            "Ports smsuper may use besides the serving port (the metrics port comes from here)."),
    # -- the user's code, in train and serve
    Setting("SAGEMAKER_BASE_DIR", _nonempty("a directory path"), "/opt/ml",
            "Root of the platform's files (config, data, model, output).",
            jobs=("train", "serve")),
    Setting("SAGEMAKER_PROGRAM", _text("a file name"), "",
            "The user's entry point: training script, or serving handler module.",
            jobs=("train", "serve"),
            default_doc="train: the sagemaker_program hyperparameter, else `train` on PATH; serve: inference.py"),
    Setting("SAGEMAKER_SUBMIT_DIRECTORY", _text("a path or s3:// URI"), "",
            "Local directory or .tar.gz holding the user's code, or an s3:// .tar.gz downloaded into an empty /opt/ml/code.",
            jobs=("train", "serve"), default_doc="the sagemaker_submit_directory hyperparameter, else /opt/ml/code"),
    Setting("SMSUPER_INSTALL_REQUIREMENTS", _boolean, True,
            "Install a requirements.txt found beside the user's code before it runs.",
            jobs=("train", "serve")),
    # -- training
    Setting("SAGEMAKER_TRAINING_MODULE", _module_attr("function"), None,
            "`module:function` a framework image runs instead of a script.",
            jobs=("train",)),
    Setting("SAGEMAKER_CONTAINER_LOG_LEVEL", _integer(0, 50), 20,
            "Log level handed to the script as SM_LOG_LEVEL (Python logging numbers).",
            jobs=("train",)),
    Setting("SMSUPER_HOST_WAIT_TIMEOUT", _number(0.0), 300.0,
            "Seconds to wait for every training host name to resolve before failing.",
            jobs=("train",)),
    Setting("SMSUPER_TORCH_DISTRIBUTED", _boolean, False,
            "Launch the script with torchrun across all hosts (also enabled by the sagemaker_torch_distributed_enabled hyperparameter).",
            jobs=("train",)),
    Setting("SMSUPER_MASTER_PORT", _port(), 29500,
            "Port of the distributed master on the first host (exported as MASTER_PORT).",
            jobs=("train",)),
    Setting("SMSUPER_METRIC_DEFINITIONS", _metric_definitions, [],
            "Metrics parsed from the training log, like the platform's metric definitions.", jobs=("train",),
            default_doc="[]"),
    # -- serving
    Setting("SAGEMAKER_BIND_TO_PORT", _port(), 8080,
            "Port nginx listens on.", jobs=("serve",)),
    # The seed's serve script read MODEL_SERVER_WORKERS and MODEL_SERVER_TIMEOUT: images built
    # from it still set them.
    Setting("SAGEMAKER_MODEL_SERVER_WORKERS", _integer(1, 1024), None,
            "Number of gunicorn workers (with SAGEMAKER_MULTI_MODEL: per model).", jobs=("serve",),
            default_doc="the CPUs this container may use; 1 per model with SAGEMAKER_MULTI_MODEL",
            aliases=("MODEL_SERVER_WORKERS",)),
    Setting("SAGEMAKER_MODEL_SERVER_TIMEOUT", _integer(1, 3600), 60,
            "Seconds a request may take; nginx and gunicorn timeouts both follow it.",
            jobs=("serve",), aliases=("MODEL_SERVER_TIMEOUT",)),
    Setting("SMSUPER_STREAM_TIMEOUT", _number(0.0), 3600.0,
            "Seconds a streamed answer may last in all (0: no bound); the gap between two chunks is "
            "bounded by SAGEMAKER_MODEL_SERVER_TIMEOUT.", jobs=("serve",)),
    Setting("SAGEMAKER_ENABLE_STATEFUL_SESSIONS", _boolean, False,
            "Stateful sessions: X-Amzn-SageMaker-Session-Id: NEW_SESSION creates one, whose store "
            "handlers read and write through context.session.", jobs=("serve",)),
    Setting("SAGEMAKER_SESSIONS_EXPIRATION", _integer(1, 7 * 24 * 3600, "an integer of seconds"), 1200,
            "Seconds a stateful session lives after it was created.", jobs=("serve",)),
    Setting("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", _nonempty("a media type"), "application/json",
            "Response type when a request sends no Accept header (or */*).", jobs=("serve",)),
    Setting("SMSUPER_JSON_ALLOW_NAN", _boolean, False,
            "Let the default JSON codecs read and write NaN, Infinity and -Infinity as Python does (not "
            "standard JSON). Off: such input is a 400 and such predictions are written as null.",
            jobs=("serve",)),
    Setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", _integer(1, 1024), 6,
            "Largest request body in MiB (6 is the API's limit; batch transform allows up to 100, "
            "asynchronous inference up to 1 GB).", jobs=("serve",)),
    Setting("SAGEMAKER_MULTI_MODEL", _boolean, False,
            "Set by the platform for a multi-model endpoint: models are loaded, invoked and unloaded at run "
            "time through /models (docs/serving.md), each in its own processes.", jobs=("serve",)),
    Setting("SMSUPER_MODEL_MEMORY_MARGIN_MB", _integer(0, what="an integer of MiB"), 128,
            "With SAGEMAKER_MULTI_MODEL: MiB of the memory limit kept free; a load that would leave less "
            "(judged by what the loaded models take) is refused with 507.", jobs=("serve",)),
    Setting("SAGEMAKER_BATCH", _boolean, False,
            "Set by batch transform.", jobs=("serve",)),
    Setting("SAGEMAKER_BATCH_STRATEGY", _choice("MULTI_RECORD", "SINGLE_RECORD"), "MULTI_RECORD",
            "Reported by /execution-parameters.", jobs=("serve",)),
    Setting("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", _integer(1, 1024), None,
            "Reported by /execution-parameters.", jobs=("serve",),
            default_doc="the worker count"),
    Setting("SMSUPER_APP", _module_attr("attr"), None,
            "Serve the user's own WSGI app (`module:attr`) instead of the handler functions.",
            jobs=("serve",)),
    Setting("SMSUPER_WORKER_THREADS", _integer(1, 256), 1,
            "Threads per gunicorn worker; above 1 uses gthread workers instead of sync.",
            jobs=("serve",)),
    Setting("SMSUPER_BATCH_SIZE", _integer(1, 256), 1,
            "Server-side batching: the most concurrent /invocations one worker predicts in one call "
            "(predict_fn on the stacked rows, or predict_batch_fn); 1 is off. Above 1 each worker runs "
            "this many request threads (at least). Not for SMSUPER_APP or transform_fn.", jobs=("serve",)),
    Setting("SMSUPER_BATCH_DELAY_MS", _integer(0, 3600000, "an integer of milliseconds"), 10,
            "Server-side batching: the longest a request waits for others to fill its batch, in milliseconds "
            "(a full batch goes at once).", jobs=("serve",)),
    Setting("SMSUPER_BIDIRECTIONAL_STREAM_PATH", _stream_path, "/invocations-bidirectional-stream",
            "Path where serve accepts the platform's bidirectional streams (WebSocket connections, answered "
            "by the handler module's stream_fn), for clients that name another path.",
            jobs=("serve",)),
    Setting("SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER", _integer(1, 1024), 32,
            "Bidirectional streams one gunicorn worker holds at once, each in threads of its own beside the "
            "worker's requests; one more is refused with 503.", jobs=("serve",)),
    Setting("SMSUPER_PRELOAD_MODEL", _boolean, False,
            "Load the model once in the gunicorn master before forking, so workers share its memory.",
            jobs=("serve",)),
    Setting("SMSUPER_MAX_REQUESTS", _integer(0), 0,
            "Recycle a worker after this many requests (0: never).", jobs=("serve",)),
    Setting("SMSUPER_LOG_PING", _boolean, False,
            "Also write /ping requests to the access log.", jobs=("serve",)),
    Setting("SMSUPER_NGINX", _text("a program name or path"), "nginx",
            "The nginx program; when it is not found gunicorn binds the port itself, with a warning.",
            jobs=("serve",)),
    Setting("SMSUPER_RUNTIME_DIR", _text("a directory path"), "",
            "Private directory for rendered configs, sockets and pid files; SMSUPER_USER must be able to "
            "reach it (serve stops at once otherwise).", jobs=("serve",),
            default_doc="a new directory under the first of TMPDIR, /tmp, /dev/shm that SMSUPER_USER can reach"),
    Setting("SMSUPER_RESTART_LIMIT", _integer(1), 5,
            "Restarts of nginx or gunicorn allowed within SMSUPER_RESTART_WINDOW before the job gives up.",
            jobs=("serve",)),
    Setting("SMSUPER_RESTART_WINDOW", _number(1.0), 60.0,
            "Seconds over which SMSUPER_RESTART_LIMIT counts restarts.",
            jobs=("serve",)),
)

SETTINGS: Dict[str, Setting] = {}
for _setting in _DECLARED:
    assert _setting.name not in SETTINGS, _setting.name
    SETTINGS[_setting.name] = _setting


def _unset(setting: Setting, raw: Optional[str]) -> bool:
    return raw is None or (raw.strip() == "" and setting.parse.parse is not _as_is)


def value(name: str, environ: Optional[Mapping[str, str]] = None, job: Optional[str] = None) -> Any:
    """The parsed value of setting `name` (else of its first alias that is set), or the default
    (of `job`, when the setting declares one for it)."""
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    source, raw = name, env.get(name)
    for alias in setting.aliases if _unset(setting, raw) else ():
        source, raw = alias, env.get(alias)
        if not _unset(setting, raw):
            break
    if _unset(setting, raw):
        return setting.default_for(job)
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as error:
        detail = f" ({error})" if str(error) and str(error) != raw else ""
        alias_of = f" (an alias of {name})" if source != name else ""
        raise SettingError(
            f"{source}={raw!r}{alias_of} is not valid{detail}: it accepts {setting.accepts}. "
            f"Fix or unset {source} (default: {setting.shown_default()})."
        ) from None


def validate(job: str, environ: Optional[Mapping[str, str]] = None) -> None:
    """Fail at start, naming the variable, when any setting of `job` is bad."""
    for setting in SETTINGS.values():
        if "all" in setting.jobs or job in setting.jobs:
            value(setting.name, environ)


def help_text() -> str:
    lines = []
    for setting in SETTINGS.values():
        jobs = "" if "all" in setting.jobs else f" [{', '.join(setting.jobs)}]"
        aliases = f" (or {', '.join(setting.aliases)})" if setting.aliases else ""
        lines.append(f"  {setting.name}{aliases}{jobs}")
        lines.append(f"      {setting.doc} Accepts {setting.accepts}; default: {setting.shown_default()}.")
    return "\n".join(lines)


def markdown_table() -> str:
    rows = ["| variable | jobs | default | accepts | what it does |", "|---|---|---|---|---|"]
    for setting in SETTINGS.values():
        jobs = "all" if "all" in setting.jobs else ", ".join(setting.jobs)
        rows.append(
            f"| {setting.shown_name()} | {jobs} | {setting.shown_default()} | {setting.accepts} | {setting.doc} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m smsuper.settings --markdown
    import sys

    print(markdown_table() if "--markdown" in sys.argv else help_text())
