#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (run as root):
# podman + runc for real containers, debootstrap to build their images, nginx and wrk for
# serve, prometheus for the metrics checks, and the Python test extra.
# Fast no-op when everything is already there. Safe to run again.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian package names. The keyring lets debootstrap verify trixie and sid, not only the host's
# suite; fuse-overlayfs is podman's storage fallback where native overlay is unavailable.
# The SDK local-mode test (tests/test_sdk_local_mode.py) runs podman's service in a network
# namespace of its own (iproute2): netavark needs iptables there, and compose's host names
# (algo-1, algo-2) need aardvark-dns. The benchmark's official-toolkit baseline runs
# multi-model-server, whose frontend is Java (its Python side: scripts/install-bench-deps.sh).
PACKAGES=(
    podman runc conmon netavark slirp4netns uidmap fuse-overlayfs
    iproute2 iptables aardvark-dns
    debootstrap debian-archive-keyring tar
    nginx-light wrk prometheus
    openjdk-17-jre-headless
    ca-certificates
)

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A third-party source that cannot be reached must not stop us: the install below fails
    # loudly if Debian's own lists are really missing.
    $SUDO apt-get update -q || log "apt-get update reported errors; trying the install anyway"
    # --no-install-recommends: podman's recommends pull in crun and others we do not use.
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    log "Debian packages already installed"
fi

# podman's configuration for this kind of machine: runc (crun fails on this kernel's cgroups),
# cgroupfs (no systemd as PID 1) and file events (no journald). The tests pass the same
# settings as flags; this drop-in makes plain `podman` commands (README, bench) work too.
CONF_DIR=/etc/containers/containers.conf.d
CONF_FILE=$CONF_DIR/50-smsuper.conf
CONF='# Written by smsuper scripts/install-test-deps.sh
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'
if [ ! -f "$CONF_FILE" ] || [ "$(cat "$CONF_FILE")" != "$(printf '%s' "$CONF")" ]; then
    log "writing $CONF_FILE"
    $SUDO mkdir -p "$CONF_DIR"
    printf '%s' "$CONF" | $SUDO tee "$CONF_FILE" >/dev/null
fi

# The images built by the tests are cached here, keyed by suite (see tests/containers.py).
$SUDO mkdir -p "${SMSUPER_TEST_CACHE:-/var/cache/smsuper-tests}"

# The Python side: smsuper itself (editable) with its test extra.
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore  # root is expected here: no warning
pip_install() {
    "$PYTHON" -m pip install --disable-pip-version-check -q "$@"
}
log "pip install -e .[test] with $("$PYTHON" --version 2>&1)"
pip_err=$(mktemp)
trap 'rm -f "$pip_err"' EXIT
if ! pip_install -e '.[test]' 2>"$pip_err"; then
    if grep -q externally-managed "$pip_err"; then
        # Debian's own python3 refuses site-wide installs unless told (PEP 668).
        pip_install --break-system-packages -e '.[test]'
    else
        cat "$pip_err" >&2
        exit 1
    fi
fi

# The two-host torch.distributed test: a CPU build of torch that this kind of machine keeps on
# disk (pip finds it there; a plain `torch` would download a CUDA build of several GB).
if ! "$PYTHON" -c "import torch.distributed" 2>/dev/null; then
    log "pip install torch==2.13.0 (CPU build, for tests/test_train_distributed.py)"
    pip_install torch==2.13.0 || pip_install --break-system-packages torch==2.13.0
fi

log "ok: $(podman --version), $(runc --version | head -n1), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"
