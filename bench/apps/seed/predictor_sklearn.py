"""The seed-style predictor for the real model: the platform's bring-your-own-container
example's shape with a scikit-learn model. /invocations accepts only text/csv, parses it
with pandas (read_csv, no header), predicts, and answers one prediction per line as CSV
through a pandas DataFrame, as the example does; the model is read once with joblib from
the model directory (SAGEMAKER_BASE_DIR/model, /opt/ml/model by default).
"""
import io
import os

import flask
import joblib
import pandas as pd

prefix = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
model_path = os.path.join(prefix, "model")


class ScoringService:
    model = None

    @classmethod
    def get_model(cls):
        if cls.model is None:
            cls.model = joblib.load(os.path.join(model_path, "model.joblib"))
        return cls.model

    @classmethod
    def predict(cls, frame):
        return cls.get_model().predict(frame.values)


app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    health = ScoringService.get_model() is not None
    return flask.Response(response="\n", status=200 if health else 404, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def transformation():
    if flask.request.content_type != "text/csv":
        return flask.Response(response="This predictor only supports CSV data", status=415, mimetype="text/plain")
    frame = pd.read_csv(io.StringIO(flask.request.data.decode("utf-8")), header=None)
    predictions = ScoringService.predict(frame)
    out = io.StringIO()
    pd.DataFrame({"results": predictions}).to_csv(out, header=False, index=False)
    return flask.Response(response=out.getvalue(), status=200, mimetype="text/csv")
