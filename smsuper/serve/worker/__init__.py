"""Code that runs in a gunicorn worker: the Flask app, the user's code (handlers or WSGI app), codecs."""
