"""A predictor in the seed's own style (its Flask `app`), served with SMSUPER_APP=predictor:app.

The model is loaded lazily, like the seed's: a factor read from the model directory.
"""
import os
import flask

class ScoringService:
    model = None

    @classmethod
    def get_model(cls):
        if cls.model is None:
            with open(os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "model", "factor.txt")) as handle:
                factor = int(handle.read())
            cls.model = lambda rows: [factor * len(row.split(",")) for row in rows]
        return cls.model

app = flask.Flask(__name__)

@app.route("/ping", methods=["GET"])
def ping():
    health = ScoringService.get_model() is not None
    return flask.Response(response="\n", status=200 if health else 404, mimetype="application/json")

@app.route("/invocations", methods=["POST"])
def transformation():
    if flask.request.content_type != "text/csv":
        return flask.Response(response="This predictor only supports CSV data", status=415, mimetype="text/plain")
    rows = flask.request.data.decode("utf-8").splitlines()
    result = "\n".join(str(n) for n in ScoringService.get_model()(rows))
    return flask.Response(response=result, status=200, mimetype="text/csv")
