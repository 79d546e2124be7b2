"""A model's gunicorn master on a multi-model endpoint (one per loaded model)."""
