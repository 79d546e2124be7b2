#!/usr/bin/env bash
# The benchmark's own dependencies (run as root; bench/run.py runs it itself when a figure needs
# them): Java for multi-model-server (Debian's openjdk-17-jre-headless), and a venv holding
# bench/requirements.txt: the official inference toolkit, multi-model-server, scikit-learn,
# pandas. smsuper itself needs none of them.
#
#   BENCH_VENV  where the venv goes (default /var/cache/smsuper-bench/venv-pyX.Y)
#   PYTHON      the interpreter it is made from (default /usr/bin/python3, as the benchmark uses)
#
# Fast no-op when the venv already holds this very requirements file. Prints the venv's python.
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf 'install-bench-deps: %s\n' "$*" >&2; }

PYTHON="${PYTHON:-/usr/bin/python3}"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
BENCH_VENV="${BENCH_VENV:-/var/cache/smsuper-bench/venv-py$version}"
REQUIREMENTS=bench/requirements.txt

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if ! command -v java >/dev/null 2>&1; then
    log "installing openjdk-17-jre-headless (multi-model-server's frontend is Java)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q || log "apt-get update reported errors; trying the install anyway"
    $SUDO apt-get install -y -q --no-install-recommends openjdk-17-jre-headless </dev/null
fi

wanted=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
stamp="$BENCH_VENV/.requirements.sha256"
if [ -x "$BENCH_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    log "venv $BENCH_VENV already up to date"
else
    log "making $BENCH_VENV from $("$PYTHON" --version 2>&1) with $REQUIREMENTS"
    # Readable by everyone: smsuper runs the workloads as nobody.
    $SUDO mkdir -p -m 0755 "$(dirname "$BENCH_VENV")"
    if [ -e "$BENCH_VENV" ] && [ ! -f "$BENCH_VENV/pyvenv.cfg" ]; then
        log "$BENCH_VENV exists and is not a venv: not replacing it (set BENCH_VENV elsewhere)"
        exit 1
    fi
    rm -rf "$BENCH_VENV"
    (umask 022 && "$PYTHON" -m venv "$BENCH_VENV")
    (umask 022 && PIP_ROOT_USER_ACTION=ignore "$BENCH_VENV/bin/python" -m pip install \
        --disable-pip-version-check -q -r "$REQUIREMENTS")
    echo "$wanted" > "$stamp"
fi
echo "$BENCH_VENV/bin/python"
