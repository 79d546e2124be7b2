"""A model's gunicorn workers on a multi-model endpoint: its handlers, the same as single-model serving's."""
