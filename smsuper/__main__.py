"""argv -> job. Nothing else lives here.

`train` and `serve` are the platform's words; `--help`, `--version` and
`--check` are smsuper's own; no word at all inside a training layout
(input/config/ present) means `train`; words starting with `_` are internal (a child
smsuper started from the same pyz, such as the gunicorn master); anything
else, or everything after `--`, is a command run under the init like tini.

JOBS is the one table of them: word -> "module:function", the function taking the rest of
argv and returning the exit code. A job's module is imported only when its word is given,
so PID 1 carries the code of one job alone.
"""

from __future__ import annotations

import sys
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Dict, List

from . import __version__, build_id, log, settings

USAGE = """usage: python smsuper.pyz train | serve | COMMAND [ARGS...] | -- COMMAND [ARGS...]
       python smsuper.pyz --help | --version | --check [train|serve|command]

  train     run the user's training code under the SageMaker training contract
  serve     run nginx in front of gunicorn serving the user's model
  COMMAND   run any other program under smsuper's init (like tini)
  --check   validate the settings of a job and exit

settings (environment variables):
"""


def _version(_: List[str]) -> int:
    print(f"smsuper {__version__} (build {build_id()}, python {sys.version.split()[0]})")
    return 0


def _help(_: List[str]) -> int:
    print(USAGE + settings.help_text())
    return 0


def _check(args: List[str]) -> int:
    job = args[0] if args else "command"
    settings.validate(job)
    print(f"smsuper: settings for {job} are valid")
    return 0


JOBS: Dict[str, str] = {
    "train": "smsuper.train.job:main",
    "serve": "smsuper.serve.job:main",
    # Internal: children smsuper starts from its own pyz (selfcmd.py). Users never type these.
    "_gunicorn": "smsuper.serve.master.gunicorn_app:main",
    "_model": "smsuper.serve.multimodel.master.model_server:main",
    "_model_template": "smsuper.serve.multimodel.master.template_server:main",
    "_s3-download": "smsuper.usercode.s3_child:main",
}
COMMAND = "smsuper.passthrough:main"  # any other word: the command itself, run like tini

OWN_WORDS: Dict[str, Callable[[List[str]], int]] = {
    "--version": _version,
    "--help": _help,
    "-h": _help,
    "--check": _check,
}


def _job(target: str) -> Callable[[List[str]], int]:
    module_name, function_name = target.split(":")
    # __import__ with a fromlist returns the module itself, and costs PID 1 no importlib.
    return getattr(__import__(module_name, fromlist=[function_name]), function_name)


def _training_layout() -> str:
    """The config directory of a training job around us, or ''.

    The SageMaker SDK's v3 ModelTrainer local mode starts the image with no
    command at all (v2 said `train`); the platform's training layout says
    what is meant.
    """
    import os

    try:
        base = settings.value("SAGEMAKER_BASE_DIR")
    except settings.SettingError:
        return ""
    config = os.path.join(base, "input", "config")
    return config if os.path.isdir(config) else ""


def main(argv: List[str]) -> int:
    if not argv:
        config = _training_layout()
        if config:
            log.info(f"no job given and {config} exists: running train")
            return _job(JOBS["train"])([])
        print(USAGE.rstrip(), file=sys.stderr)
        print("smsuper: no job given: say train, serve, or a command to run", file=sys.stderr)
        return 2
    word, rest = argv[0], argv[1:]
    if word in OWN_WORDS:
        job = OWN_WORDS[word]
    elif word == "--":
        job = _job(COMMAND)
    elif word in JOBS:
        job = _job(JOBS[word])
    elif word.startswith("_"):
        print(f"smsuper: unknown internal word {word!r}", file=sys.stderr)
        return 2
    else:
        job, rest = _job(COMMAND), argv
    try:
        return int(job(rest) or 0)
    except settings.SettingError as error:
        log.error(str(error))
        return 2


def run() -> None:
    code = main(sys.argv[1:])
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.exit(code)


if __name__ == "__main__":
    run()
