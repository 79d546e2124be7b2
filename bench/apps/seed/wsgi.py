"""gunicorn's entry, as in the example: the predictor's app."""
import predictor as myapp

app = myapp.app
