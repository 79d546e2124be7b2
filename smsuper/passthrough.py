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
    from typing import List, Optional

from . import roles
from .init import lifecycle, privileges
from .init.spawn import ChildSpec, SpawnError


class CommandJob(lifecycle.Job):
    name = "command"
    workload = "the command"

    def __init__(self, args: List[str]):
        self.args = args
        self.account: Optional[privileges.Workload] = None

    def begin(self) -> None:
        if not self.args:
            raise lifecycle.JobFailure("no command given after --: say which program to run")

    def prepare(self, account: privileges.Workload) -> None:
        self.account = account.with_home()
        privileges.share_std_streams(self.account)

    def title(self) -> str:
        return f"smsuper: init [{os.path.basename(self.args[0])}]"

    def start_metrics(self, supervisor) -> None:
        # Off unless asked for (settings.py says why): SMSUPER_METRICS_PORT, or the platform's
        # SAGEMAKER_SAFE_PORT_RANGE, which sets ports aside for exactly such extras.
        if any((os.environ.get(name) or "").strip() for name in ("SMSUPER_METRICS_PORT", "SAGEMAKER_SAFE_PORT_RANGE")):
            from . import metrics

            metrics.start(supervisor)

    def start(self, supervisor) -> None:
        account = self.account
        try:
            supervisor.start(ChildSpec(role=roles.COMMAND, argv=self.args, env=account.environ(os.environ),
                                       credentials=account.credentials, foreground=True), primary=True)
        except SpawnError as failure:
            raise lifecycle.JobFailure(failure.message, failure.exit_code, kind="SpawnError") from None

    def cleanup(self) -> None:
        if self.account is not None:
            self.account.cleanup()


def main(args: List[str]) -> int:
    return lifecycle.run(CommandJob(args))
