"""PID 1's end of the model template (master/template_server.py): models forked, not started.

A model's gunicorn master started afresh spends most of a load starting Python and importing
gunicorn, Flask and smsuper's master and worker modules (bench/ figure 10). So the endpoint
starts one template process at start-up, as a model would be started (the workload's user,
privileges dropped, the serving environment, relayed output), which has those imported and
forks a master per load. The model's ChildSpec gets `spawn` below as its spawner: the
supervisor makes the model's relay pipes as for any child and calls it; it sends the master's
argv, cwd and the two pipes to the template over their private socket pair and waits for the
pid (a fork: milliseconds; at most REPLY_LIMIT). Until the template has said it is ready
(its imports done), loads start afresh: PID 1's loop never waits for the imports. The pid must be PID 1's own child that the
supervisor does not know yet, running as the workload's user: what the template says is never
believed blindly: it runs as that user, who could have replaced it. From then on the master is supervised exactly as one PID 1 spawned.

When the template is gone (it died, was killed, never started) or fails a request, the load
falls back to spawn.spawn: the model is started afresh, only slower. A template that failed
is killed and not replaced: one that fails once would likely fail again. (A template that
answers after REPLY_LIMIT may have forked that master all the same: it then runs unsupervised,
its socket taken over by the master started afresh, until the job stops and PID 1 stops every
leftover process.)
"""

from __future__ import annotations

import json
import os
import signal
import socket

from ... import log, roles, selfcmd
from ...init import procfs
from ...init.spawn import ChildSpec, SpawnError, spawn as spawn_afresh

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Optional

REPLY_LIMIT = 10.0  # seconds; a fork takes milliseconds, but a busy machine may be slow
ROLE = f"{roles.MODEL} template"


class Template:
    def __init__(self):
        self.supervisor = None
        self.child = None
        self.channel: Optional[socket.socket] = None
        self.uid: Optional[int] = None
        self.ready = False  # its imports are done: loads are forked from it

    def start(self, supervisor, env: Mapping[str, str], cwd: Optional[str], credentials) -> None:
        self.supervisor = supervisor
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = selfcmd.self_argv("_model_template", "--channel-fd", str(theirs.fileno()))
        spec = ChildSpec(role=ROLE, argv=argv, env=env, cwd=cwd, credentials=credentials, relay=True,
                         stop_signal=signal.SIGTERM, on_exit=self._exited, pass_fds=(theirs.fileno(),))
        try:
            self.child = supervisor.start(spec)
        except (OSError, SpawnError) as error:
            log.warning(f"cannot start the model template ({getattr(error, 'message', error)}): every model is "
                        f"started afresh")
            ours.close()
            return
        finally:
            theirs.close()
        self.channel = ours
        self.uid = credentials.uid if credentials is not None else os.getuid()
        # The template says when its imports are done; PID 1's loop must not wait for that.
        ours.setblocking(False)
        supervisor.add_reader(ours.fileno(), self._on_ready)

    def _on_ready(self) -> None:
        channel = self.channel
        if channel is None:
            return
        self.supervisor.remove_reader(channel.fileno())
        try:
            ready = json.loads(channel.recv(4096) or b"{}").get("ready") is True
        except Exception:  # anything but its ready message: the template is not used
            ready = False
        if not ready:
            log.warning("the model template did not start: every model is started afresh")
            self._abandon()
            return
        channel.settimeout(REPLY_LIMIT)
        self.ready = True
        log.info("the model template is ready: models are forked from it")

    def spawn(self, spec: ChildSpec, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
        """ChildSpec.spawner of a model's master: forked by the template, else started afresh."""
        if self.channel is None or not self.ready:
            return spawn_afresh(spec, stdout_fd, stderr_fd)
        request = json.dumps({"argv": list(spec.argv), "cwd": spec.cwd}).encode()
        try:
            socket.send_fds(self.channel, [request], [stdout_fd, stderr_fd])
            reply = json.loads(self.channel.recv(4096) or b"{}")
            if "pid" not in reply:
                raise ValueError(reply.get("error") or "no answer")
            pid = int(reply["pid"])
            self._check(pid)
        except Exception as error:  # whatever the template did, PID 1 goes on: the load starts afresh
            log.warning(f"the model template failed to fork {spec.role} ({error}): it is stopped, and models are "
                        f"started afresh from now on")
            self._abandon()
            return spawn_afresh(spec, stdout_fd, stderr_fd)
        log.info(f"{spec.role}: forked from the template (pid {pid})")
        return pid

    def _check(self, pid: int) -> None:
        """The pid is a new child of PID 1's, of the workload's user (else PID 1 would
        supervise, and signal, a process the template merely named)."""
        if pid <= 1 or pid == os.getpid() or any(child.pid == pid for child in self.supervisor.children):
            raise ValueError(f"pid {pid} is not a new model master")
        parent = procfs.parent_of(pid)
        if parent != os.getpid():
            raise ValueError(f"pid {pid} is not PID 1's child (its parent is {parent})")
        if _uids_of(pid) != {self.uid}:
            raise ValueError(f"pid {pid} does not run as the workload's user")

    def _exited(self, child, status) -> None:
        if not self.supervisor.stopping:
            log.warning(f"the model template stopped ({status.describe()}): models are started afresh from now on")
        self._close()
        self.supervisor.forget(child)

    def _abandon(self) -> None:
        child = self.child
        self._close()
        if child is not None and child.pid is not None:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _close(self) -> None:
        self.ready = False
        if self.channel is not None:
            self.supervisor.remove_reader(self.channel.fileno())
            self.channel.close()
            self.channel = None


def _uids_of(pid: int) -> set:
    """Real, effective, saved and filesystem uids of pid (/proc/PID/status)."""
    with open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"Uid:"):
                return {int(value) for value in line.split()[1:]}
    return set()
