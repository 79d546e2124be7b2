"""Multi-model endpoints (SAGEMAKER_MULTI_MODEL=true): models loaded and unloaded at run time.

  PID 1 ── nginx :8080 ─┬─ /models, /models/NAME ──> PID 1's management API (api.py, on a unix socket)
                        └─ /models/NAME/invoke ────> that model's own gunicorn (its unix socket)
       └─ one gunicorn master per model (master/model_server.py), its own process group and workers

Which process runs each file (the folders say it, as in serve/):
  PID 1:               api.py (the HTTP side of /models), manager.py (the model table: load,
                       unload, exits, metrics), memory.py (limit, use, 507), nginx_routes.py
                       (nginx's locations of routes.MULTI_MODEL_TABLE), endpoint.py (the serve
                       job's hook), layout.py and names.py (read by the others too)
  a model's master:    master/model_server.py (loads the model once, then gunicorn forks its workers)
  a model's workers:   worker/model_service.py (the model's handlers, the same as single-model serving)

PID 1 never opens anything below a model's URL: the model's own unprivileged
processes read it. What PID 1 reads back from a model's directory (its
failure report, its readiness flag) goes through init/untrusted.py.
"""
