"""The tini-like job: run any command as the init's only child.

The command writes straight to our stdout/stderr (a terminal keeps working),
gets every signal we receive in its process group, and its exit code becomes
ours. Like every workload it runs as SMSUPER_USER (see init/privileges.py).
Only the init is involved: nothing SageMaker-specific happens here.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List

from . import log, settings
from .init import capabilities, privileges
from .init.spawn import ChildSpec, SpawnError
from .init.supervisor import Supervisor
from .titles import set_title

DEFAULT_GRACE_PERIOD = 8.0  # inside `docker stop`'s default 10 s
# `docker run -it IMAGE bash`: the terminal is the person's, as under tini; smsuper speaks when
# something is wrong, or when SMSUPER_LOG_LEVEL asks.
DEFAULT_LOG_LEVEL = "warning"


def main(args: List[str]) -> int:
    if not args:
        log.error("no command given after --: say which program to run")
        return 2
    settings.validate("command")
    log.configure(settings.value("SMSUPER_LOG_LEVEL") or DEFAULT_LOG_LEVEL, settings.value("SMSUPER_LOG_FORMAT"))
    grace = settings.value("SMSUPER_GRACE_PERIOD")
    try:
        account = privileges.start_checks(settings.value("SMSUPER_ALLOW_PRIVILEGED"),
                                          settings.value("SMSUPER_USER"), os.environ)
    except privileges.PrivilegeError as error:
        log.error(str(error))
        return 2
    account = account.with_home()
    privileges.share_std_streams(account)
    if os.getpid() != 1:
        capabilities.become_subreaper()
    supervisor = Supervisor(DEFAULT_GRACE_PERIOD if grace is None else grace,
                            rewrite_stop=settings.value("SMSUPER_STOP_SIGNAL"),
                            success_codes=settings.value("SMSUPER_SUCCESS_EXIT_CODES"))
    set_title(f"smsuper: init [{os.path.basename(args[0])}]")
    # Off unless asked for (settings.py says why): SMSUPER_METRICS_PORT, or the platform's
    # SAGEMAKER_SAFE_PORT_RANGE, which sets ports aside for exactly such extras.
    if any((os.environ.get(name) or "").strip() for name in ("SMSUPER_METRICS_PORT", "SAGEMAKER_SAFE_PORT_RANGE")):
        from . import metrics

        metrics.start(supervisor)  # before restrict_init: the port may be below 1024
    try:
        supervisor.start(ChildSpec(role="command", argv=args, env=account.environ(os.environ),
                                   credentials=account.credentials, foreground=True), primary=True)
    except SpawnError as failure:
        log.error(failure.message)
        account.cleanup()
        return failure.exit_code
    privileges.restrict_init()
    code = supervisor.run()
    account.cleanup()
    return code
