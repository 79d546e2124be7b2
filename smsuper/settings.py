"""Every setting smsuper reads, declared once.

Each `Setting` names its environment variable (and any older names still
honoured, its aliases: the declared name wins), how its text is parsed (which
also validates it), its default and a one-line doc. This table drives value
parsing, `--help` and the README's settings table (`python -m smsuper.settings
--markdown` prints it), so the three can never disagree.

Bad values fail at start (`validate`) with a message that names the variable
and says what it accepts, instead of surfacing later as a confusing crash.
"""

from __future__ import annotations

import json
import os
import re
TYPE_CHECKING = False  # typing costs PID 1 ~2 MB of RSS; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

    Parser = Callable[[str], Any]


class SettingError(ValueError):
    """A setting holds a value its parser refuses; the message says what to do."""


class Setting:
    # A plain class, not a dataclass: importing dataclasses costs PID 1 ~3 MB.
    __slots__ = ("name", "parse", "default", "doc", "accepts", "jobs", "default_doc", "aliases")

    def __init__(self, name: str, parse: Parser, default: Any, doc: str, accepts: str,
                 jobs: Tuple[str, ...] = ("all",), default_doc: Optional[str] = None,
                 aliases: Tuple[str, ...] = ()):
        self.name = name
        self.parse = parse
        self.default = default
        self.doc = doc
        self.accepts = accepts
        # Which jobs read it: used to validate only what the chosen job needs and
        # to group the --help output. "all" means every job.
        self.jobs = jobs
        # Shown instead of the default's text when the default is computed at run time.
        self.default_doc = default_doc
        # Older names still honoured, read only when `name` itself is unset (it wins).
        self.aliases = aliases

    def shown_name(self) -> str:
        if not self.aliases:
            return f"`{self.name}`"
        return f"`{self.name}` (or {', '.join(f'`{alias}`' for alias in self.aliases)})"

    def shown_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.default is None:
            return "(unset)"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


# ---- parsers -----------------------------------------------------------------
# Each returns a parser and carries a human description of what it accepts.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _integer(low: Optional[int] = None, high: Optional[int] = None) -> Parser:
    def parse(text: str) -> int:
        value = int(text.strip())
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(text)
        return value

    return parse


def _number(low: float = 0.0) -> Parser:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not value >= low or value != value or value == float("inf"):
            raise ValueError(text)
        return value

    return parse


def _choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        for option in options:
            if option.lower() == lowered:
                return option
        raise ValueError(text)

    return parse


def _signal(text: str) -> Optional[int]:
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


def _exit_codes(text: str) -> Tuple[int, ...]:
    codes = []
    for word in text.replace(",", " ").split():
        code = int(word)
        if not 0 <= code <= 255:
            raise ValueError(text)
        codes.append(code)
    return tuple(codes)


def _text(text: str) -> str:
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text.strip()


def _port_range(text: str) -> Optional[Tuple[int, int]]:
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text)
    if not match:
        raise ValueError(text)
    low, high = int(match.group(1)), int(match.group(2))
    if not (1 <= low <= high <= 65535):
        raise ValueError(text)
    return (low, high)


_STREAM_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
# The platform's other routes (serve/routes.py) and nginx's internal locations.
_TAKEN_PATHS = ("/ping", "/invocations", "/execution-parameters")


def _stream_path(text: str) -> str:
    path = text.strip()
    if not _STREAM_PATH.fullmatch(path) or path in _TAKEN_PATHS or path.startswith("/_smsuper"):
        raise ValueError(text)
    return path


_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*(\(\))?)?$")


def _module_attr(text: str) -> Optional[str]:
    if not text.strip():
        return None
    if not _MODULE_ATTR.match(text.strip()):
        raise ValueError(text)
    return text.strip()


def _metric_definitions(text: str) -> list:
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


# ---- the table ---------------------------------------------------------------

_DECLARED: Iterable[Setting] = (
    # -- every job
    Setting("SMSUPER_LOG_LEVEL", _choice("debug", "info", "warning", "error"), None,
            "Lowest level of smsuper's own messages (on stderr). A pass-through command's terminal shows only "
            "the command's output unless something is wrong, as under tini.", "debug, info, warning or error",
            default_doc="info for train and serve, warning for other commands"),
    Setting("SMSUPER_LOG_FORMAT", _choice("text", "json"), "text",
            "`json` writes smsuper's own messages and nginx's access log as JSON lines.", "text or json"),
    Setting("SMSUPER_GRACE_PERIOD", _number(0.0), None,
            "Seconds between the graceful stop signal and SIGKILL of every remaining process.",
            "a number of seconds >= 0",
            default_doc="110 for train, 25 for serve, 8 for other commands"),
    Setting("SMSUPER_STOP_SIGNAL", _signal, None,
            "Signal the command or training program gets instead of the stop signal PID 1 received (SIGTERM or "
            "SIGINT), and when smsuper stops it on its own; the grace period and SIGKILL still follow. Not for "
            "serve: nginx and gunicorn always get the signal that drains them.",
            "a signal name (SIGINT, INT) or number other than SIGKILL, SIGSTOP and SIGCHLD",
            jobs=("command", "train"), default_doc="(unset): the received signal, SIGTERM for smsuper's own stops"),
    Setting("SMSUPER_SUCCESS_EXIT_CODES", _exit_codes, (),
            "Exit codes of the command or training program that count as success: smsuper exits 0 (and train "
            "writes no failure file). 128+N means death by signal N, so 143 covers SIGTERM as well.",
            "exit codes 0-255, comma- or space-separated", jobs=("command", "train"), default_doc="(unset)"),
    Setting("SMSUPER_CACHE_DIR", _text, "",
            "Where the pyz unpacks its libraries (with compiled bytecode and setproctitle's extension).",
            "a directory path",
            default_doc="/var/cache/smsuper if writable, else $XDG_CACHE_HOME/smsuper or ~/.cache/smsuper, else /tmp/smsuper-cache-UID"),
    Setting("SMSUPER_USER", _nonempty, "nobody",
            "Account every workload runs as when smsuper starts as root (`root` keeps uid 0, discouraged).",
            "a user name, a uid, or uid:gid"),
    Setting("SMSUPER_ALLOW_PRIVILEGED", _boolean, False,
            "Start even in a privileged container (the platform never runs one).", "true or false"),
    Setting("SMSUPER_METRICS_PORT", _integer(0, 65535), 9464,
            "Port of the Prometheus endpoint served by PID 1; 0 turns it off. Other commands open no port "
            "unless it (or SAGEMAKER_SAFE_PORT_RANGE) is set: a shell or a tool run under the init has nothing to report but process figures, "
            "and a port nobody asked for could clash with the command's own.",
            "a port number 0-65535",
            default_doc="train and serve: 9464, or the first port of SAGEMAKER_SAFE_PORT_RANGE; other commands: off"),
    Setting("SMSUPER_RUNTIME_DIR", _text, "",
            "Private directory for rendered configs, sockets and pid files; SMSUPER_USER must be able to "
            "reach it (serve stops at once otherwise).", "a directory path",
            default_doc="a new directory under the first of TMPDIR, /tmp, /dev/shm that SMSUPER_USER can reach"),
    # -- training
    Setting("SAGEMAKER_BASE_DIR", _nonempty, "/opt/ml",
            "Root of the platform's files (config, data, model, output).", "a directory path",
            jobs=("train", "serve")),
    Setting("SAGEMAKER_PROGRAM", _text, "",
            "The user's entry point: training script, or serving handler module.", "a file name",
            jobs=("train", "serve"),
            default_doc="train: the sagemaker_program hyperparameter, else `train` on PATH; serve: inference.py"),
    Setting("SAGEMAKER_SUBMIT_DIRECTORY", _text, "",
            "Local directory or .tar.gz holding the user's code, or an s3:// .tar.gz downloaded into an empty /opt/ml/code.",
            "a path or s3:// URI",
            jobs=("train", "serve"), default_doc="the sagemaker_submit_directory hyperparameter, else /opt/ml/code"),
    Setting("SAGEMAKER_TRAINING_MODULE", _module_attr, None,
            "`module:function` a framework image runs instead of a script.", "module:function",
            jobs=("train",)),
    Setting("SAGEMAKER_CONTAINER_LOG_LEVEL", _integer(0, 50), 20,
            "Log level handed to the script as SM_LOG_LEVEL (Python logging numbers).", "an integer 0-50",
            jobs=("train", "serve")),
    Setting("SMSUPER_INSTALL_REQUIREMENTS", _boolean, True,
            "Install a requirements.txt found beside the user's code before it runs.", "true or false",
            jobs=("train", "serve")),
    Setting("SMSUPER_HOST_WAIT_TIMEOUT", _number(0.0), 300.0,
            "Seconds to wait for every training host name to resolve before failing.", "a number of seconds >= 0",
            jobs=("train",)),
    Setting("SMSUPER_TORCH_DISTRIBUTED", _boolean, False,
            "Launch the script with torchrun across all hosts (also enabled by the sagemaker_torch_distributed_enabled hyperparameter).",
            "true or false", jobs=("train",)),
    Setting("SMSUPER_MASTER_PORT", _integer(1, 65535), 29500,
            "Port of the distributed master on the first host (exported as MASTER_PORT).", "a port number",
            jobs=("train",)),
    Setting("SMSUPER_METRIC_DEFINITIONS", _metric_definitions, [],
            "Metrics parsed from the training log, like the platform's metric definitions.",
            'a JSON list such as [{"Name": "train:loss", "Regex": "loss=([0-9.]+)"}]', jobs=("train",),
            default_doc="[]"),
    # -- serving
    Setting("SAGEMAKER_BIND_TO_PORT", _integer(1, 65535), 8080,
            "Port nginx listens on.", "a port number", jobs=("serve",)),
    Setting("SAGEMAKER_SAFE_PORT_RANGE", _port_range, None,
            "Ports smsuper may use besides the serving port (the metrics port comes from here).", "LOW-HIGH",
            jobs=("serve", "train", "command")),
    # The seed's serve script read MODEL_SERVER_WORKERS and MODEL_SERVER_TIMEOUT: images built
    # from it still set them.
    Setting("SAGEMAKER_MODEL_SERVER_WORKERS", _integer(1, 1024), None,
            "Number of gunicorn workers.", "an integer >= 1", jobs=("serve",),
            default_doc="the CPUs this container may use", aliases=("MODEL_SERVER_WORKERS",)),
    Setting("SAGEMAKER_MODEL_SERVER_TIMEOUT", _integer(1, 3600), 60,
            "Seconds a request may take; nginx and gunicorn timeouts both follow it.", "an integer 1-3600",
            jobs=("serve",), aliases=("MODEL_SERVER_TIMEOUT",)),
    Setting("SMSUPER_STREAM_TIMEOUT", _number(0.0), 3600.0,
            "Seconds a streamed answer may last in all (0: no bound); the gap between two chunks is "
            "bounded by SAGEMAKER_MODEL_SERVER_TIMEOUT.", "a number of seconds >= 0", jobs=("serve",),
            default_doc="3600"),
    Setting("SAGEMAKER_ENABLE_STATEFUL_SESSIONS", _boolean, False,
            "Stateful sessions: X-Amzn-SageMaker-Session-Id: NEW_SESSION creates one, whose store "
            "handlers read and write through context.session.", "true or false", jobs=("serve",)),
    Setting("SAGEMAKER_SESSIONS_EXPIRATION", _integer(1, 7 * 24 * 3600), 1200,
            "Seconds a stateful session lives after it was created.", "an integer of seconds >= 1",
            jobs=("serve",)),
    Setting("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", _nonempty, "application/json",
            "Response type when a request sends no Accept header (or */*).", "a media type", jobs=("serve",)),
    Setting("SMSUPER_JSON_ALLOW_NAN", _boolean, False,
            "Let the default JSON codecs read and write NaN, Infinity and -Infinity as Python does (not "
            "standard JSON). Off: such input is a 400 and such predictions are written as null.",
            "true or false", jobs=("serve",)),
    Setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", _integer(1, 1024), 6,
            "Largest request body in MiB (6 is the API's limit; batch transform allows up to 100, "
            "asynchronous inference up to 1 GB).", "an integer 1-1024", jobs=("serve",)),
    Setting("SAGEMAKER_BATCH", _boolean, False,
            "Set by batch transform.", "true or false", jobs=("serve",)),
    Setting("SAGEMAKER_BATCH_STRATEGY", _choice("MULTI_RECORD", "SINGLE_RECORD"), "MULTI_RECORD",
            "Reported by /execution-parameters.", "MULTI_RECORD or SINGLE_RECORD", jobs=("serve",)),
    Setting("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", _integer(1, 1024), None,
            "Reported by /execution-parameters.", "an integer >= 1", jobs=("serve",),
            default_doc="the worker count"),
    Setting("SMSUPER_APP", _module_attr, None,
            "Serve the user's own WSGI app (`module:attr`) instead of the handler functions.", "module:attr",
            jobs=("serve",)),
    Setting("SMSUPER_WORKER_THREADS", _integer(1, 256), 1,
            "Threads per gunicorn worker; above 1 uses gthread workers instead of sync.", "an integer >= 1",
            jobs=("serve",)),
    Setting("SMSUPER_BATCH_SIZE", _integer(1, 256), 1,
            "Server-side batching: the most concurrent /invocations one worker predicts in one call "
            "(predict_fn on the stacked rows, or predict_batch_fn); 1 is off. Above 1 each worker runs "
            "this many request threads (at least). Not for SMSUPER_APP or transform_fn.", "an integer from 1 to 256",
            jobs=("serve",)),
    Setting("SMSUPER_BATCH_DELAY_MS", _integer(0, 3600000), 10,
            "Server-side batching: the longest a request waits for others to fill its batch, in milliseconds "
            "(a full batch goes at once).", "an integer from 0 to 3600000",
            jobs=("serve",)),
    Setting("SMSUPER_BIDIRECTIONAL_STREAM_PATH", _stream_path, "/invocations-bidirectional-stream",
            "Path where serve accepts the platform's bidirectional streams (WebSocket connections, answered "
            "by the handler module's stream_fn), for clients that name another path.",
            "a path of letters, digits and ._~- segments, not /ping, /invocations or /execution-parameters",
            jobs=("serve",)),
    Setting("SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER", _integer(1, 1024), 32,
            "Bidirectional streams one gunicorn worker holds at once, each in threads of its own beside the "
            "worker's requests; one more is refused with 503.", "an integer 1-1024", jobs=("serve",)),
    Setting("SMSUPER_PRELOAD_MODEL", _boolean, False,
            "Load the model once in the gunicorn master before forking, so workers share its memory.",
            "true or false", jobs=("serve",)),
    Setting("SMSUPER_MAX_REQUESTS", _integer(0), 0,
            "Recycle a worker after this many requests (0: never).", "an integer >= 0", jobs=("serve",)),
    Setting("SMSUPER_LOG_PING", _boolean, False,
            "Also write /ping requests to the access log.", "true or false", jobs=("serve",)),
    Setting("SMSUPER_NGINX", _text, "nginx",
            "The nginx program; when it is not found gunicorn binds the port itself, with a warning.",
            "a program name or path", jobs=("serve",)),
    Setting("SMSUPER_RESTART_LIMIT", _integer(1), 5,
            "Restarts of nginx or gunicorn allowed within SMSUPER_RESTART_WINDOW before the job gives up.",
            "an integer >= 1", jobs=("serve",)),
    Setting("SMSUPER_RESTART_WINDOW", _number(1.0), 60.0,
            "Seconds over which SMSUPER_RESTART_LIMIT counts restarts.", "a number of seconds >= 1",
            jobs=("serve",)),
)

SETTINGS: Dict[str, Setting] = {}
for _setting in _DECLARED:
    assert _setting.name not in SETTINGS, _setting.name
    SETTINGS[_setting.name] = _setting


def _unset(setting: Setting, raw: Optional[str]) -> bool:
    return raw is None or (raw.strip() == "" and setting.parse is not _text)


def value(name: str, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The parsed value of setting `name` (else of its first alias that is set), or its default."""
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    source, raw = name, env.get(name)
    for alias in setting.aliases if _unset(setting, raw) else ():
        source, raw = alias, env.get(alias)
        if not _unset(setting, raw):
            break
    if _unset(setting, raw):
        return setting.default
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


def for_job(job: str) -> Iterable[Setting]:
    return [s for s in SETTINGS.values() if "all" in s.jobs or job in s.jobs]


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
