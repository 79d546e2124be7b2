"""`smsuper serve`: nginx in front of gunicorn workers serving the user's model.

  PID 1 (job.py) ── nginx (nginx.py)  :8080 ──unix socket──> gunicorn master (gunicorn_app.py)
                 │                                             └─ workers: Flask app (app.py) or the user's WSGI app
                 └─ relays stdout/stderr of both and nginx's access-log FIFO

Module map: config (settings and every derived timeout), runtime (the private
directory's files), readiness (/ping's marker files), nginx (its config),
gunicorn_app (master, workers, hooks, draining stop), service (one process's
model: loading/ready/failed), handlers (style A user functions), user_app
(style B WSGI app), app (the Flask app), codecs + npy (default JSON/CSV/NPY),
negotiation (Content-Type/Accept), context (the handlers' `context`
argument), errors (status codes), routes (the platform's routes and their
methods), access_log (FIFO relay, and the counts of what nginx answered),
requirements (pip).

How /ping stays fast: it never reaches a worker. Each worker, once its model
is loaded, creates a marker file in the runtime directory and the shared
`ready` flag; gunicorn's master removes a dead worker's marker (and the flag
with the last one), PID 1 removes all of them if the master dies. nginx
answers /ping itself: 200 with an empty body when the flag exists, otherwise
503 with ping-status.json, which says why (loading, load failure, restart).
A stat() per ping: no queueing behind predictions, however busy the workers.
Without nginx, /ping is answered by the workers (and can wait behind them).

How a slow prediction ends: nginx waits SAGEMAKER_MODEL_SERVER_TIMEOUT
seconds and answers 504 with a JSON body; gunicorn's own timeout is 5 s
longer, so the stuck sync worker is killed (and replaced) only after the
client already has its one clear answer, never a 502 from the kill.
"""
