"""The bare baseline: a minimal Flask app served by gunicorn on TCP, nothing in front.

/invocations does the trivial model's work (JSON in, JSON out, optional sleep),
the same work smsuper's handler path and the seed-style predictor do.
"""
import json
import time

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    return Response(b"", status=200)


@app.route("/invocations", methods=["POST"])
def invocations():
    data = json.loads(request.get_data())
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(float(data["sleep"]))
    return Response(json.dumps(data), status=200, mimetype="application/json")
