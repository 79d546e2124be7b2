"""Serving the nearest-centroid model: smsuper's default CSV decoder gives rows of floats."""

import glob
import json
import os


def model_fn(model_dir):
    # The SDK's multi-host fit leaves one model file per host; any of them holds the centroids.
    path = sorted(glob.glob(os.path.join(model_dir, "model-*.json")))[0]
    with open(path) as handle:
        return json.load(handle)["centroids"]


def predict_fn(rows, centroids):
    def distance(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))
    return [min(centroids, key=lambda label: distance(centroids[label], row)) for row in rows]
