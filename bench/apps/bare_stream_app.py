"""The bare baseline of bench/streaming.py: the same generator in a minimal Flask app, served by
gunicorn on TCP with nothing in front."""
import json

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    return Response(b"", status=200)


@app.route("/invocations", methods=["POST"])
def invocations():
    data = json.loads(request.get_data())
    chunk = b"x" * (int(data.get("size", 64)) - 1) + b"\n"
    return Response((chunk for _ in range(int(data["chunks"]))), status=200, mimetype="application/octet-stream")
