"""The seed's predictor.py: a Flask app with /ping and /invocations.

smsuper serves it behind nginx and gunicorn with SMSUPER_APP=predictor:app; the
seed's own serve, wsgi.py and nginx.conf are not needed. smsuper asks this
app's /ping once while each worker boots, so the model below is loaded before
the worker takes traffic; afterwards nginx answers /ping itself, so health
checks never queue behind predictions.
"""

import csv
import io
import os
import pickle

import flask  # bundled in smsuper.pyz: no need to install it
import numpy as np

prefix = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
model_path = os.path.join(prefix, "model")


class ScoringService(object):
    model = None  # where we keep the model when it's loaded

    @classmethod
    def get_model(cls):
        """Get the model object for this instance, loading it if it's not already loaded."""
        if cls.model is None:
            with open(os.path.join(model_path, "decision-tree-model.pkl"), "rb") as inp:
                cls.model = pickle.load(inp)
        return cls.model

    @classmethod
    def predict(cls, rows):
        return cls.get_model().predict(rows)


app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    """Healthy when the model loads."""
    health = ScoringService.get_model() is not None
    return flask.Response(response="\n", status=200 if health else 404, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def transformation():
    """CSV in (one flower per line, four measurements), one predicted species per line out."""
    if (flask.request.content_type or "").split(";")[0].strip() != "text/csv":
        return flask.Response(response="This predictor only supports CSV data", status=415, mimetype="text/plain")
    text = flask.request.data.decode("utf-8")
    rows = np.asarray([[float(v) for v in record] for record in csv.reader(io.StringIO(text)) if record])
    print(f"Invoked with {rows.shape[0]} records")

    predictions = ScoringService.predict(rows)

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([p] for p in predictions)
    return flask.Response(response=out.getvalue(), status=200, mimetype="text/csv")
