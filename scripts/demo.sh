#!/usr/bin/env bash
# smsuper end to end: build it, train an example model, serve it, ask it, read metrics, stop it.
#
#   bash scripts/demo.sh                         on this machine: nginx, and a venv for scikit-learn
#   bash scripts/demo.sh --container             the same story in a podman container built from
#                                                the example's Dockerfile
#   bash scripts/demo.sh --example seed-style    the seed's layout (a `train` program, a Flask
#                                                predictor.py) instead of the framework style
#
# Made for a Debian machine where you are root; it installs what it needs itself: python3-venv,
# nginx and curl from Debian and scikit-learn into a venv (kept for later runs); for --container
# podman and debootstrap (scripts/install-test-deps.sh). It prints each step with the time it
# took, and when a step fails it says why and exits non-zero.
#
# Files go under /var/tmp/smsuper-demo (SMSUPER_DEMO_WORK: this run's directory, emptied at
# start and kept afterwards; SMSUPER_DEMO_VENV: the venv), a place the unprivileged user who
# runs the workload (nobody) can reach, unlike a checkout under /root.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=local
EXAMPLE=sklearn-iris
while [ $# -gt 0 ]; do
    case "$1" in
        --container) MODE=container ;;
        --example) EXAMPLE=${2:?--example needs a name: sklearn-iris or seed-style}; shift ;;
        --example=*) EXAMPLE=${1#--example=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$EXAMPLE" in
    sklearn-iris|seed-style) ;;
    *) echo "demo: no example named $EXAMPLE: sklearn-iris or seed-style" >&2; exit 2 ;;
esac

EXAMPLE_DIR=$ROOT/examples/$EXAMPLE
DEMO_DIR=/var/tmp/smsuper-demo
WORK=${SMSUPER_DEMO_WORK:-$DEMO_DIR/$MODE-$EXAMPLE}
VENV=${SMSUPER_DEMO_VENV:-$DEMO_DIR/venv}
ML=$WORK/ml           # what the container sees as /opt/ml
PYZ=$ROOT/dist/smsuper.pyz
IMAGE=localhost/smsuper-demo-$EXAMPLE:latest
# Debian's python3, never one under /root (pyenv's): the workload's user must be able to run it.
PYTHON=/usr/bin/python3

# ---- output ---------------------------------------------------------------------------------
if [ -t 1 ]; then BOLD=$'\e[1m'; DIM=$'\e[2m'; RED=$'\e[31m'; GREEN=$'\e[32m'; OFF=$'\e[0m'
else BOLD=""; DIM=""; RED=""; GREEN=""; OFF=""; fi
T0=$EPOCHREALTIME
STEP_T0=$T0
STEP_NO=0
STEPS=9
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step() {
    if [ "$STEP_NO" -gt 0 ]; then printf '%s    (%ss)%s\n' "$DIM" "$(elapsed "$STEP_T0")" "$OFF"; fi
    STEP_NO=$((STEP_NO + 1))
    STEP_T0=$EPOCHREALTIME
    printf '\n%s==> [%d/%d] %s%s\n' "$BOLD" "$STEP_NO" "$STEPS" "$*" "$OFF"
}
say() { printf '    %s\n' "$*"; }
show() { printf '    %s$ %s%s\n' "$DIM" "$*" "$OFF"; }   # the command a user would type
indent() { sed -u 's/^/    | /'; }
die() { printf '\n%sdemo FAILED: %s%s\n' "$RED" "$*" "$OFF" >&2; exit 1; }

# ---- cleanup: only what this run started -----------------------------------------------------
SERVE_PID=""
CONTAINER=""
POLICY_RC=""
cleanup() {
    if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    if [ -n "$CONTAINER" ]; then podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true; fi
    if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- steps shared by both modes ---------------------------------------------------------------
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

apt_install() {  # package names; "nginx" means nginx-light where the suite still has it
    [ "$(id -u)" -eq 0 ] || die "installing $* needs root (or install them yourself and run again)"
    # No package may start a system-wide nginx on port 80 behind our back.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod +x "$POLICY_RC"
    fi
    export DEBIAN_FRONTEND=noninteractive
    local log packages=() pkg
    log=$(mktemp)
    apt-get update -q >"$log" 2>&1 || say "apt-get update reported errors; trying the install anyway"
    for pkg in "$@"; do
        if [ "$pkg" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then pkg=nginx-light; fi
        packages+=("$pkg")
    done
    show "apt-get install -y --no-install-recommends ${packages[*]}"
    if ! apt-get install -y -q --no-install-recommends "${packages[@]}" </dev/null >>"$log" 2>&1; then
        tail -n 20 "$log" | indent
        die "apt-get install ${packages[*]} failed"
    fi
    grep -E '^Setting up' "$log" | indent || true
    rm -f "$log"
    if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; POLICY_RC=""; fi
}

new_work_dir() {
    rm -rf "$WORK"
    mkdir -p "$WORK"
    chmod 755 "$DEMO_DIR" "$WORK" 2>/dev/null || true
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_training_input() {  # the files the platform writes before `train`, under $ML
    local channel hyperparameters
    if [ "$EXAMPLE" = sklearn-iris ]; then
        channel=train
        # As the SageMaker SDK writes them: every value a JSON-encoded string.
        hyperparameters='{"max_depth": "3", "criterion": "\"entropy\"", "sagemaker_program": "\"train.py\""}'
    else
        channel=training  # the seed's channel name
        hyperparameters='{"max_leaf_nodes": "5"}'
    fi
    mkdir -p "$ML/input/config" "$ML/input/data/$channel" "$ML/model" "$ML/output"
    printf '%s\n' "$hyperparameters" >"$ML/input/config/hyperparameters.json"
    printf '{"%s": {"ContentType": "text/csv", "TrainingInputMode": "File"}}\n' "$channel" \
        >"$ML/input/config/inputdataconfig.json"
    printf '{"current_host": "algo-1", "hosts": ["algo-1"]}\n' >"$ML/input/config/resourceconfig.json"
    CHANNEL_FILE=$ML/input/data/$channel/iris.csv
}

show_training_input() {
    say "input/config/hyperparameters.json: $(cat "$ML/input/config/hyperparameters.json")"
    say "$(wc -l <"$CHANNEL_FILE") rows in ${CHANNEL_FILE#"$ML"/} (species, then 4 measurements), the first two:"
    head -n 2 "$CHANNEL_FILE" | indent
}

check_training() {  # $1: exit code
    local code=$1
    if [ "$code" -ne 0 ]; then
        if [ -f "$ML/output/failure" ]; then say "output/failure says:"; head -c 1024 "$ML/output/failure" | indent; fi
        die "training exited with code $code"
    fi
    say "${GREEN}training exited with code 0${OFF}; model/ holds:"
    (cd "$ML/model" && ls -l | tail -n +2) | indent
    if [ -f "$ML/output/success" ]; then say "and output/success marks the job Completed"; fi
}

PORT=""
METRICS_PORT=""

wait_until_ready() {  # $1: a command that fails once the server is gone
    local alive=$1 start=$EPOCHREALTIME
    show "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/ping   # until 200"
    for _ in $(seq 1 600); do
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/ping" 2>/dev/null; then
            say "${GREEN}/ping answered 200${OFF} $(elapsed "$start")s after the start"
            return 0
        fi
        $alive || return 1
        sleep 0.1
    done
    return 1
}

ask() {  # $1: content type, $2: body, $3: the status expected (200); prints the answer
    local type=$1 body=$2 expected=${3:-200} out status
    show "curl -s http://127.0.0.1:$PORT/invocations -H 'Content-Type: $type' -H 'Accept: $type' --data-binary \$'${body//$'\n'/\\n}'"
    out=$(curl -sS --max-time 30 -w '\n%{http_code}' -H "Content-Type: $type" -H "Accept: $type" \
        --data-binary "$body" "http://127.0.0.1:$PORT/invocations") || die "the $type request failed"
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    say "HTTP $status:"
    printf '%s\n' "$out" | sed '/^$/d' | sed "s/^/    ${type//\//\\/} answer> /"
    [ "$status" = "$expected" ] || die "the $type request answered HTTP $status, not $expected"
}

predictions() {
    say "four flowers, measured in cm (sepal length, sepal width, petal length, petal width):"
    ask text/csv $'5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3'
    if [ "$EXAMPLE" = sklearn-iris ]; then
        ask application/json '[[5.9, 3.0, 4.2, 1.5], [4.6, 3.4, 1.4, 0.3]]'
        say "a flower with 3 measurements: the client gets the handler's 400 and its message"
        ask application/json '[[5.9, 3.0, 4.2]]' 400
    else
        ask text/csv $'5.9,3.0,4.2,1.5\n4.6,3.4,1.4,0.3'
        say "(the seed's predictor.py reads CSV only: JSON would get its 415)"
    fi
}

metrics() {  # Prometheus text served by PID 1 on SMSUPER_METRICS_PORT
    local text="" lines
    show "curl -s http://127.0.0.1:$METRICS_PORT/metrics"
    # PID 1 counts requests from nginx's access log, which nginx flushes once a second (and the
    # /ping calls while the model loaded are counted already): ask until the invocations are there.
    for _ in $(seq 20); do
        text=$(curl -fsS --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null) || text=""
        case "$text" in *'smsuper_http_requests_total{route="/invocations"'*) break ;; esac
        sleep 0.25
    done
    [ -n "$text" ] || die "no metrics endpoint answered on port $METRICS_PORT"
    # Prefer the figures this story moved (requests, the build, processes up, model load), then any.
    lines=$( { printf '%s\n' "$text" | grep -E '^smsuper_http_requests_total[{ ]' | grep -v 'route="/ping"'
               printf '%s\n' "$text" | grep -E '^smsuper_' | grep -v '_bucket{' \
                   | grep -E '_info[{ ]|_up[{ ]|model_load'; } | head -n 8 || true)
    [ -n "$lines" ] || lines=$(printf '%s\n' "$text" | grep -E '^smsuper_' | head -n 8 || true)
    [ -n "$lines" ] || die "the metrics endpoint answered without any smsuper_ sample"
    say "$(printf '%s\n' "$text" | grep -c '^smsuper_') smsuper_ samples; a few of them:"
    printf '%s\n' "$lines" | sed 's/^/    metric> /'
}

report_stop() {  # $1: exit code, $2: seconds, $3: what stopped it
    if [ "$1" -ne 0 ]; then die "smsuper exited with code $1 after $3 (0 was expected)"; fi
    say "${GREEN}clean exit: smsuper exited with code 0${OFF} $2s after $3"
}

finish() {
    printf '%s    (%ss)%s\n' "$DIM" "$(elapsed "$STEP_T0")" "$OFF"
    printf '\n%sdemo finished in %ss%s (%s, %s; files in %s)\n' "$BOLD" "$(elapsed "$T0")" "$OFF" \
        "$MODE" "$EXAMPLE" "$WORK"
}

# ---- on this machine ------------------------------------------------------------------------
make_venv() {
    local marker=$VENV/.smsuper-demo version
    version="$("$PYTHON" --version 2>&1) scikit-learn"
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9  # one builder at a time: tests and people may run the demo at once
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$version" ]; then
        say "reusing it ($("$VENV/bin/python" -c 'import sklearn; print("scikit-learn", sklearn.__version__)'))"
    else
        rm -rf "$VENV"
        show "$PYTHON -m venv $VENV"
        "$PYTHON" -m venv "$VENV" 2>&1 | indent
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "python3 -m venv failed"
        show "$VENV/bin/pip install scikit-learn"
        if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q scikit-learn >"$VENV.log" 2>&1; then
            tail -n 30 "$VENV.log" | indent
            die "pip install scikit-learn failed (full log: $VENV.log)"
        fi
        printf '%s\n' "$version" >"$marker"
        say "installed $("$VENV/bin/python" -c 'import sklearn; print("scikit-learn", sklearn.__version__)')"
    fi
    exec 9>&-
}

run_local() {
    local code
    step "Debian packages: python3-venv, nginx, curl"
    local missing=()
    installed python3-venv || missing+=(python3-venv)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; else say "already installed"; fi

    step "scikit-learn in a virtual environment ($VENV)"
    make_venv
    local py=$VENV/bin/python

    step "build smsuper.pyz"
    show "python3 build_zipapp.py"
    "$py" build_zipapp.py -o "$PYZ" | indent
    new_work_dir
    show "cp dist/smsuper.pyz $WORK/   # what an image's COPY smsuper.pyz /smsuper.pyz does"
    cp "$PYZ" "$WORK/smsuper.pyz"
    local pyz=$WORK/smsuper.pyz
    show "python3 smsuper.pyz --version"
    "$py" "$pyz" --version | indent

    step "lay out the training job in $ML, as the platform would in /opt/ml"
    write_training_input
    show "python3 examples/write_iris_csv.py > ${CHANNEL_FILE#"$WORK"/}"
    "$py" examples/write_iris_csv.py >"$CHANNEL_FILE"
    local env_run=(env SAGEMAKER_BASE_DIR="$ML" SMSUPER_ALLOW_PRIVILEGED=1) serve_dir=$ML
    if [ "$EXAMPLE" = sklearn-iris ]; then
        mkdir -p "$ML/code" && cp "$EXAMPLE_DIR"/code/*.py "$ML/code/"
        say "code/: $(cd "$ML/code" && echo *), where the Dockerfile puts it (/opt/ml/code)"
    else
        # The seed's layout: `train` found on PATH, predictor.py imported from the working directory.
        cp -r "$EXAMPLE_DIR/program" "$WORK/program"
        serve_dir=$WORK/program
        env_run+=(PATH="$WORK/program:$VENV/bin:$PATH" SMSUPER_APP=predictor:app)
        say "program/ (train, predictor.py) on PATH and the working directory, as the Dockerfile has /opt/program"
    fi
    show_training_input
    say "SMSUPER_ALLOW_PRIVILEGED=1: this machine looks like a privileged container to smsuper,"
    say "which refuses to start in one unless told; never set it in an image"

    step "train"
    show "SAGEMAKER_BASE_DIR=$ML python3 smsuper.pyz train"
    set +e
    # Metrics on a free port: another process may hold the default one (9464).
    (cd "$serve_dir" && "${env_run[@]}" SMSUPER_METRICS_PORT="$(free_port)" "$py" "$pyz" train) 2>&1 | indent
    code=${PIPESTATUS[0]}
    set -e
    check_training "$code"

    step "serve"
    PORT=$(free_port)
    METRICS_PORT=$(free_port)
    show "SAGEMAKER_BASE_DIR=$ML SAGEMAKER_BIND_TO_PORT=$PORT SMSUPER_METRICS_PORT=$METRICS_PORT python3 smsuper.pyz serve &"
    (cd "$serve_dir" && exec "${env_run[@]}" SAGEMAKER_BIND_TO_PORT="$PORT" SMSUPER_METRICS_PORT="$METRICS_PORT" \
        "$py" "$pyz" serve) >"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    say "smsuper is pid $SERVE_PID; its output goes to $WORK/serve.log"
    if ! wait_until_ready "kill -0 $SERVE_PID"; then
        indent <"$WORK/serve.log"
        die "the server did not become ready"
    fi
    head -n 5 "$WORK/serve.log" | indent

    step "predictions"
    predictions

    step "metrics"
    metrics

    step "stop with SIGTERM, as the platform does"
    show "kill -TERM $SERVE_PID"
    local start=$EPOCHREALTIME seconds
    kill -TERM "$SERVE_PID"
    set +e
    wait "$SERVE_PID"
    code=$?
    set -e
    SERVE_PID=""
    seconds=$(elapsed "$start")
    say "the last lines smsuper wrote:"
    tail -n 6 "$WORK/serve.log" | indent
    report_stop "$code" "$seconds" "SIGTERM"
    finish
}

# ---- in a podman container ------------------------------------------------------------------
container_running() {
    [ "$(podman inspect --format '{{.State.Status}}' "$CONTAINER" 2>/dev/null)" = running ]
}

run_container() {
    local code context=$WORK/context
    STEPS=10
    step "tools: podman, runc, debootstrap, curl"
    if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
        && command -v curl >/dev/null && [ -x "$PYTHON" ] && python3 -c 'import pytest' 2>/dev/null; then
        say "already installed ($(podman --version))"
    else
        show "bash scripts/install-test-deps.sh"
        bash scripts/install-test-deps.sh 2>&1 | indent
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "scripts/install-test-deps.sh failed"
    fi

    step "build smsuper.pyz"
    show "python3 build_zipapp.py"
    python3 build_zipapp.py -o "$PYZ" | indent

    step "base image: Debian bookworm with python3 and nginx-light, made by tests/containers.py"
    say "with debootstrap the first time (minutes), then cached by podman and in /var/cache/smsuper-tests"
    local settings
    # Its podman flags (runc, cgroupfs, file events, ulimits, host network) suit this machine.
    settings=$(python3 - <<'EOF'
import shlex
import sys

sys.path.insert(0, "tests")
import containers  # the tests' image builder: one recipe for the base images

record = containers.build_base_image("bookworm")
print(f"BASE={shlex.quote(containers.base_tag('bookworm'))}")
print(f"BASE_HOW={shlex.quote(record.line())}")
print(f"PODMAN_FLAGS=({' '.join(map(shlex.quote, containers.PODMAN[1:]))})")
print(f"RUN_FLAGS=({' '.join(map(shlex.quote, containers.RUN_FLAGS))})")
EOF
) || die "building the base image failed"
    eval "$settings"
    podman() { command podman "${PODMAN_FLAGS[@]}" "$@"; }
    say "$BASE_HOW"

    step "build the example image from examples/$EXAMPLE/Dockerfile"
    new_work_dir
    cp -r "$EXAMPLE_DIR" "$context"
    cp "$PYZ" "$context/smsuper.pyz"
    show "cp dist/smsuper.pyz examples/$EXAMPLE/ && podman build --build-arg BASE=$BASE -t $IMAGE examples/$EXAMPLE"
    set +e
    podman build --pull=never --network host --build-arg BASE="$BASE" -t "$IMAGE" "$context" \
        >"$WORK/build.log" 2>&1
    code=$?
    set -e
    grep -E '^(STEP|--> Using cache|COMMIT|smsuper )' "$WORK/build.log" | indent || true
    if [ "$code" -ne 0 ]; then tail -n 30 "$WORK/build.log" | indent; die "podman build exited with code $code"; fi

    step "lay out the training job in $ML, to mount at the container's /opt/ml"
    write_training_input
    say "the data set, written by the image's Python (any command but train/serve runs under smsuper's init):"
    show "podman run --rm -v \$PWD/examples:/examples:ro $IMAGE python /examples/write_iris_csv.py > ${CHANNEL_FILE#"$WORK"/}"
    podman run --rm "${RUN_FLAGS[@]}" -e SMSUPER_METRICS_PORT=0 -v "$ROOT/examples:/examples:ro" \
        "$IMAGE" python /examples/write_iris_csv.py >"$CHANNEL_FILE" 2>"$WORK/data.log" || {
        indent <"$WORK/data.log"; die "writing the data set failed"; }
    indent <"$WORK/data.log"
    show_training_input

    step "train: podman run IMAGE train"
    # Not all of ml/ at /opt/ml: that would hide the code the image keeps in /opt/ml/code.
    local mounts=(-v "$ML/input:/opt/ml/input" -v "$ML/model:/opt/ml/model" -v "$ML/output:/opt/ml/output")
    show "podman run --rm -v \$ML/input:/opt/ml/input -v \$ML/model:/opt/ml/model -v \$ML/output:/opt/ml/output $IMAGE train"
    CONTAINER=smsuper-demo-train-$$
    set +e
    # Metrics on a free port of the host's network: another process may hold the default one (9464).
    podman run --rm --name "$CONTAINER" "${RUN_FLAGS[@]}" -e SMSUPER_METRICS_PORT="$(free_port)" "${mounts[@]}" \
        "$IMAGE" train 2>&1 | indent
    code=${PIPESTATUS[0]}
    set -e
    CONTAINER=""
    check_training "$code"

    step "serve: podman run -d IMAGE serve"
    PORT=$(free_port)
    METRICS_PORT=$(free_port)
    CONTAINER=smsuper-demo-serve-$$
    show "podman run -d --network host -e SAGEMAKER_BIND_TO_PORT=$PORT -e SMSUPER_METRICS_PORT=$METRICS_PORT -v \$ML/model:/opt/ml/model $IMAGE serve"
    say "(without --network host: -p 8080:8080 and the default ports)"
    podman run -d --name "$CONTAINER" "${RUN_FLAGS[@]}" -e SAGEMAKER_BIND_TO_PORT="$PORT" \
        -e SMSUPER_METRICS_PORT="$METRICS_PORT" -v "$ML/model:/opt/ml/model" "$IMAGE" serve | indent
    if ! wait_until_ready container_running; then
        podman logs "$CONTAINER" 2>&1 | indent
        die "the server did not become ready"
    fi
    podman logs "$CONTAINER" 2>&1 | sed -n 1,5p | indent  # sed, not head: no SIGPIPE for podman

    step "predictions"
    predictions

    step "metrics"
    metrics

    step "stop: podman stop sends SIGTERM (SIGKILL after -t seconds), as the platform does"
    show "podman stop -t 30 $CONTAINER"
    local start=$EPOCHREALTIME seconds
    podman stop -t 30 "$CONTAINER" >/dev/null
    seconds=$(elapsed "$start")
    code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
    say "the last lines of podman logs:"
    podman logs "$CONTAINER" 2>&1 | tail -n 6 | indent
    podman rm -f -t 0 "$CONTAINER" >/dev/null
    CONTAINER=""
    report_stop "$code" "$seconds" "podman stop"
    finish
}

# Debian's python3 first: every step runs it (a minimal Debian may lack it).
if [ ! -x "$PYTHON" ]; then printf '\n==> python3 from Debian\n'; apt_install python3; fi
if [ "$MODE" = local ]; then run_local; else run_container; fi
