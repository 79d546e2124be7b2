"""The seed-style predictor: a small Flask app answering /ping and /invocations.

Shaped like the platform's bring-your-own-container example (a ScoringService
holding the model, /ping answering from whether the model loads, /invocations
decoding the body, predicting, encoding the answer). The example speaks CSV
through pandas; here the body is JSON so the work per request equals the
other stacks' trivial model (JSON in, the same JSON out, optional sleep).
"""
import json
import time

import flask


class ScoringService:
    model = None

    @classmethod
    def get_model(cls):
        if cls.model is None:
            cls.model = lambda data: data  # the trivial model
        return cls.model

    @classmethod
    def predict(cls, data):
        if isinstance(data, dict) and "sleep" in data:
            time.sleep(float(data["sleep"]))
        return cls.get_model()(data)


app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    health = ScoringService.get_model() is not None
    return flask.Response(response="\n", status=200 if health else 404, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def transformation():
    if flask.request.content_type != "application/json":
        return flask.Response(response="This predictor only supports JSON data", status=415, mimetype="text/plain")
    data = json.loads(flask.request.data.decode("utf-8"))
    result = json.dumps(ScoringService.predict(data))
    return flask.Response(response=result, status=200, mimetype="application/json")
