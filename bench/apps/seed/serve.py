"""The seed-style launcher, written fresh after the platform's bring-your-own-container example.

It starts nginx and gunicorn (sync workers on a unix socket), waits until
either exits, and on SIGTERM sends nginx SIGQUIT and gunicorn SIGTERM and
exits at once, the way the example's `serve` program does. As PID 1 of a
container its exit takes every other process down with it.

Settings (environment): MODEL_SERVER_TIMEOUT (60), MODEL_SERVER_WORKERS (CPU
count), SEED_NGINX, SEED_NGINX_CONF, SEED_SOCKET, SEED_GUNICORN (JSON list:
the command that runs gunicorn; the example simply runs `gunicorn`).
"""
import json
import multiprocessing
import os
import signal
import subprocess
import sys

cpu_count = multiprocessing.cpu_count()
model_server_timeout = os.environ.get("MODEL_SERVER_TIMEOUT", 60)
model_server_workers = int(os.environ.get("MODEL_SERVER_WORKERS", cpu_count))


def sigterm_handler(nginx_pid, gunicorn_pid):
    try:
        os.kill(nginx_pid, signal.SIGQUIT)
    except OSError:
        pass
    try:
        os.kill(gunicorn_pid, signal.SIGTERM)
    except OSError:
        pass
    sys.exit(0)


def start_server():
    print("Starting the inference server with {} workers.".format(model_server_workers), flush=True)
    nginx = subprocess.Popen([os.environ.get("SEED_NGINX", "nginx"), "-e", "stderr", "-c",
                              os.environ["SEED_NGINX_CONF"]])
    gunicorn = subprocess.Popen(json.loads(os.environ["SEED_GUNICORN"]) + [
        "--timeout", str(model_server_timeout), "-k", "sync", "-b", "unix:" + os.environ["SEED_SOCKET"],
        "-w", str(model_server_workers), "wsgi:app"])
    signal.signal(signal.SIGTERM, lambda a, b: sigterm_handler(nginx.pid, gunicorn.pid))
    # If either subprocess exits, so do we.
    pids = {nginx.pid, gunicorn.pid}
    while True:
        pid, _ = os.wait()
        if pid in pids:
            break
    sigterm_handler(nginx.pid, gunicorn.pid)
    print("Inference server exiting")


if __name__ == "__main__":
    start_server()
