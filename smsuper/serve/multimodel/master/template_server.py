"""The model template (`python smsuper.pyz _model_template`): a pre-started interpreter that
forks a model's gunicorn master for each POST /models.

Started by PID 1 with SAGEMAKER_MULTI_MODEL=true, as a model would be (the workload's user,
its privileges dropped, the serving environment), it imports what every model master runs
(gunicorn, Flask, smsuper's master and worker modules) once, then waits on its channel to
PID 1 (a SOCK_SEQPACKET socket it inherited) for load requests. A load then costs a fork
instead of an interpreter start and those imports (bench/ figure 10: most of a load's time).
Nothing of any model is imported here: the user's code, its requirements and model_fn run in
the forked master only, exactly as in a master started afresh.

A request is the master's argv (`... _model --runtime-dir ... --name NAME ...`) and its cwd,
with its stdout and stderr (PID 1's relay pipes for that model) as SCM_RIGHTS. The master is
forked twice over: the intermediate process forks it and exits at once, so the master is an
orphan re-parented to PID 1 (the namespace's init, or a child subreaper), which supervises it
as its own child (exits, 137 -> 507, drain on DELETE, SIGTERM) as it does a master it started
itself. The reply is the master's pid, sent once the intermediate is gone (the master is PID
1's child by then; PID 1 checks it is). The master puts itself in a process group of its own,
takes the relay pipes as its stdout and stderr, closes everything else, clears the signal mask,
and then runs model_server.main as `_model` would: its return unwinds out of this module's
main (not a raw exit), so the interpreter ends as a master started afresh does.

The channel's end (EOF: PID 1 is gone) ends the template; so does SIGTERM (its default action,
which PID 1's stop sends). The template stays single-threaded: fork is safe here.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import sys
from typing import List, Optional

from .... import titles
from ....init.fds import close_fds_except

TITLE = "smsuper model template"
MAX_REQUEST = 1 << 16


def main(args: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="smsuper _model_template")
    parser.add_argument("--channel-fd", type=int, required=True)
    options = parser.parse_args(args)
    channel = socket.socket(fileno=options.channel_fd)
    channel.set_inheritable(False)
    # What every model master imports, once: gunicorn and Flask, and smsuper's master and worker
    # modules (the master's own imports are then lookups in sys.modules).
    from ...worker import app, keepalive_worker  # noqa: F401
    from . import model_server

    # What is imported now stays shared with every master forked from here: the collector
    # leaves it alone (it would write to those pages, and each master would get its own copies).
    gc.freeze()
    titles.set_title(TITLE)
    channel.send(b'{"ready": true}')  # PID 1 sends nothing before: until now its loads start afresh
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST, 2)
        except InterruptedError:
            continue
        if not message:
            return 0  # PID 1 closed its end
        try:
            request = json.loads(message)
            forked = _fork(request, fds, channel)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        else:
            if forked is None:
                # The master: its own process from here on, running what `_model` runs.
                return model_server.main(_model_args(request["argv"]))
            reply = {"pid": forked}
        for fd in fds:
            os.close(fd)
        channel.send(json.dumps(reply).encode())


def _model_args(argv: List[str]) -> List[str]:
    """The master's own arguments: what follows the `_model` word of its argv."""
    return argv[argv.index("_model") + 1:]


def _fork(request: dict, fds: List[int], channel: socket.socket) -> Optional[int]:
    """Fork the master (through an intermediate that exits): its pid here, None in the master."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        code = 0
        try:
            os.close(read_end)
            master = os.fork()
            if master == 0:
                os.close(write_end)
                _become_master(request, fds, channel)
                return None
            os.write(write_end, str(master).encode())
        except BaseException:  # in the intermediate, or a master that could not set itself up
            code = 1
        os._exit(code)
    os.close(write_end)
    text = b""
    while True:
        chunk = os.read(read_end, 32)
        if not chunk:
            break
        text += chunk
    os.close(read_end)
    os.waitpid(intermediate, 0)
    if not text.isdigit():
        raise RuntimeError("the intermediate process did not report the model master's pid")
    return int(text)


def _become_master(request: dict, fds: List[int], channel: socket.socket) -> None:
    """As spawn._become_child does for a master started afresh (the credentials are the
    template's already: PID 1 dropped them when it started it)."""
    os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    channel.close()
    if len(fds) == 2:  # else the template's own (a child PID 1 does not relay)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
    close_fds_except({0, 1, 2})
    cwd = request.get("cwd")
    if cwd:
        os.chdir(cwd)
    sys.argv = list(request["argv"][1:])
    titles.set_title(" ".join(request["argv"]))  # as a master started afresh shows until gunicorn names it

