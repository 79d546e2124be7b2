"""smsuper as PID 1 of a real container (podman + runc, Debian bookworm image).

The image is built the way users build theirs: COPY the pyz, exec-form ENTRYPOINT. podman's
default container is unprivileged, so none of these runs sets SMSUPER_ALLOW_PRIVILEGED.
`podman stop -t N` is the platform's stop: SIGTERM, then SIGKILL after N seconds.
"""

from __future__ import annotations

import re
import time

import pytest

import containers

pytestmark = [pytest.mark.slow]  # real containers

SUITE = "bookworm"
STOP_TIMEOUT = 10
# Behavioural bound, not a performance one: a stop that takes this long was ended by podman's
# SIGKILL at the -t timeout, not by the command (or by smsuper's own escalation).
WELL_UNDER_TIMEOUT = 8

# The trap runs as soon as the shell gets the signal: the forwarded SIGTERM reaches the whole
# process group, so the foreground `sleep 0.1` dies with it and the shell goes straight to the trap.
TRAPS_TERM = 'trap "echo got TERM; exit 42" TERM; echo ready; while :; do sleep 0.1; done'
IGNORES_TERM = "trap '' TERM; echo ready; sleep 1000"


@pytest.fixture(scope="module")
def image(images, pyz) -> str:
    return images.image(SUITE, pyz)


def test_stop_returns_the_commands_own_exit_code(image):
    with containers.detached(image, ["sh", "-c", TRAPS_TERM]) as box:
        box.wait_for_output("ready")
        stop = box.stop(STOP_TIMEOUT)
        containers.report(f"{SUITE}: podman stop -t {STOP_TIMEOUT}, command traps TERM: {stop.seconds:.2f}s")
        logs = box.logs()
        assert box.exit_code() == 42, f"stdout: {logs.stdout}\nstderr: {logs.stderr}"
        assert "got TERM" in logs.stdout
        assert stop.seconds < WELL_UNDER_TIMEOUT, f"stop took {stop.seconds:.1f}s: podman had to SIGKILL"
        assert not stop.podman_escalated, stop.stderr


def test_stop_escalates_to_sigkill_after_the_grace_period(image):
    env = {"SMSUPER_GRACE_PERIOD": "2", "SMSUPER_LOG_LEVEL": "debug"}
    with containers.detached(image, ["sh", "-c", IGNORES_TERM], env=env) as box:
        box.wait_for_output("ready")
        stop = box.stop(STOP_TIMEOUT)
        containers.report(f"{SUITE}: podman stop -t {STOP_TIMEOUT}, command ignores TERM, "
                          f"SMSUPER_GRACE_PERIOD=2: {stop.seconds:.2f}s")
        logs = box.logs()
        detail = f"stdout: {logs.stdout}\nstderr: {logs.stderr}\npodman stop: {stop.stderr}"
        assert box.exit_code() == 137, detail
        # Stopped by smsuper's escalation, not by podman's SIGKILL at the timeout: it was quick,
        # podman did not say it resorted to SIGKILL, and smsuper logged that it killed.
        assert stop.seconds < WELL_UNDER_TIMEOUT, detail
        assert not stop.podman_escalated, detail
        assert re.search(r"^smsuper: .*(SIGKILL|kill)", logs.stderr, re.MULTILINE | re.IGNORECASE), detail


def test_exit_code_passes_through(image):
    proc = containers.run(image, ["sh", "-c", "exit 3"])
    assert proc.returncode == 3, proc.stderr


def test_missing_program_exits_127_with_a_message(image):
    proc = containers.run(image, ["no-such-program-smsuper"])
    assert proc.returncode == 127, proc.stderr
    assert "no-such-program-smsuper" in proc.stderr
    messages = [line for line in proc.stderr.splitlines() if line.strip()]
    assert messages, "no message on stderr"


def test_runs_unprivileged_without_allow_privileged(image):
    # podman's default container: small capability set, no SMSUPER_ALLOW_PRIVILEGED.
    proc = containers.run(image, ["sh", "-c", "echo hello from $(id -u)"])
    assert proc.returncode == 0, proc.stderr
    assert "hello from" in proc.stdout


def test_orphans_leave_nothing_behind(image):
    # The literal case: the command exits at once, leaving 100 sleeps re-parented to PID 1.
    t0 = time.monotonic()
    proc = containers.run(image, ["sh", "-c", "for i in $(seq 100); do sleep 0.2 & done; exit 0"])
    containers.report(f"{SUITE}: command leaving 100 orphans ran for {time.monotonic() - t0:.2f}s")
    assert proc.returncode == 0, proc.stderr


def test_orphans_are_reaped_while_the_command_runs(image):
    # A grandchild shell leaves 100 sleeps orphaned while the command keeps running: they are
    # re-parented to smsuper (PID 1), exit after 0.2 s, and must not stay zombies. Read the
    # container's processes from the host's /proc: smsuper's children are the command only.
    script = ('sh -c "for i in \\$(seq 100); do sleep 0.2 & done; exit 0"; '
              'echo spawned; sleep 1000')
    with containers.detached(image, ["sh", "-c", script]) as box:
        box.wait_for_output("spawned")
        pid1 = box.host_pid()
        deadline = time.monotonic() + 10
        while True:
            children = containers.children_of(pid1)
            leftovers = [c for c in children if c[1] == "Z" or c[2] == "sleep"]
            if not leftovers:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"after 10 s smsuper (host pid {pid1}) still has {len(leftovers)} "
                            f"orphans or zombies: {leftovers[:5]}")
            time.sleep(0.2)
        assert any(c[2] == "sh" for c in children), f"the command is gone: {children}"
        assert box.stop(STOP_TIMEOUT).seconds < WELL_UNDER_TIMEOUT
