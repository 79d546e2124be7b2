"""argv -> job. Nothing else lives here.

`train` and `serve` are the platform's words; `--help`, `--version` and
`--check` are smsuper's own; no word at all inside a training layout
(input/config/ present) means `train`; words starting with `_` are internal (a child
smsuper started from the same pyz, such as the gunicorn master); anything
else, or everything after `--`, is a command run under the init like tini.
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


def _train(args: List[str]) -> int:
    from . import train

    return train.main(args)


def _serve(args: List[str]) -> int:
    from .serve import job

    return job.main(args)


def _internal(word: str) -> Callable[[List[str]], int]:
    def run(args: List[str]) -> int:
        from . import internal

        return internal.main(word, args)

    return run


def _command(args: List[str]) -> int:
    from . import passthrough

    return passthrough.main(args)


JOBS: Dict[str, Callable[[List[str]], int]] = {
    "--version": _version,
    "--help": _help,
    "-h": _help,
    "--check": _check,
    "train": _train,
    "serve": _serve,
}


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
            return _train([])
        print(USAGE.rstrip(), file=sys.stderr)
        print("smsuper: no job given: say train, serve, or a command to run", file=sys.stderr)
        return 2
    word, rest = argv[0], argv[1:]
    if word == "--":
        job, rest = _command, rest
    elif word.startswith("_"):
        job = _internal(word)
    else:
        job = JOBS.get(word)
        if job is None:
            job, rest = _command, argv
    try:
        return job(rest)
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
