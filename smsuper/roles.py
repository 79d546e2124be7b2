"""The names of the children smsuper starts: what logs say and the metrics' `role` label holds.

Declared once here, so a job that starts a child, a hook that looks for it and a dashboard
that filters on it all spell it the same way.
"""

COMMAND = "command"  # a pass-through job's program
SCRIPT = "script"  # the training program
PIP = "pip"  # pip install of the user's requirements, before the script or the servers
GUNICORN = "gunicorn"  # the gunicorn master
NGINX = "nginx"  # the nginx master
MODEL = "model"  # a multi-model endpoint's model: its own gunicorn master, "model NAME"
S3_DOWNLOAD = "s3-download"  # the child that downloads the user's code from S3
