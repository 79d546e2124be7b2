"""Code of the gunicorn master (`python smsuper.pyz _gunicorn`): the application, its hooks, GPU assignment."""
