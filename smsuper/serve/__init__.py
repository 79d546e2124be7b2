"""`smsuper serve`: nginx in front of gunicorn workers serving the user's model.

  PID 1 (job.py) ── nginx (nginx.py)  :8080 ──unix socket──> gunicorn master (master/gunicorn_app.py)
                 │                                             └─ workers: Flask app (worker/app.py) or the user's WSGI app
                 └─ relays stdout/stderr of both and nginx's access-log FIFO

The folders say which process runs the code:
  serve/         PID 1: job (the serving job), nginx (its config), access_log (FIFO
                 relay and the counts of what nginx answered), requirements (pip);
                 and what all three processes read: config (settings and every derived
                 timeout), routes (the platform's routes), runtime (the private
                 directory's files), readiness (/ping's marker files), program (where
                 the user's handler module is).
  serve/master/  the gunicorn master: gunicorn_app (master, hooks, draining stop), gpus.
  serve/worker/  a gunicorn worker: seam (Request and Answer: the one interface between
                 the server and the inference code), app (the Flask app), user_app
                 (the wrapper of a style B WSGI app), service (this process's model:
                 loading/ready/failed, and the entries that answer the routes),
                 handlers (style A user functions), codecs + npy (default
                 JSON/CSV/NPY), negotiation (Content-Type/Accept), context (the
                 handlers' `context` argument), errors (status codes),
                 keepalive_worker (the sync worker class).
PID 1 never imports serve/master/ or serve/worker/ (nor metrics/worker/).

The routes are one table (routes.py): nginx's locations, the Flask app's rules,
the style B wrapper's fallbacks, the metrics' route labels and the 404/405 texts
all come from it. Adding a route is one row, naming the worker entry that
answers it (seam.py).

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
