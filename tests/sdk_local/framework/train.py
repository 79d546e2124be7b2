"""Script mode, the framework way: training under __main__, model_fn and predict_fn beside it.

The SDK's SKLearn estimator runs `python train.py --scale 1` with the SM_* variables set; its
model deploys with this same file as the serving module (SAGEMAKER_PROGRAM=train.py).
"""

import argparse
import csv
import glob
import json
import os


def model_fn(model_dir):
    with open(os.path.join(model_dir, "centroids.json")) as handle:
        return json.load(handle)


def predict_fn(rows, centroids):
    def distance(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))
    return [min(centroids, key=lambda label: distance(centroids[label], row)) for row in rows]


def train(channel, scale):
    files = sorted(glob.glob(os.path.join(channel, "*.csv")))
    if not files:
        raise ValueError(f"no CSV files in the train channel {channel}")
    groups = {}
    for path in files:
        with open(path, newline="") as handle:
            for record in csv.reader(handle):
                if record:
                    groups.setdefault(record[0], []).append([float(v) * scale for v in record[1:]])
    return {label: [sum(column) / len(rows) for column in zip(*rows)] for label, rows in sorted(groups.items())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
    parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAIN"])
    args = parser.parse_args()
    centroids = train(args.train, args.scale)
    with open(os.path.join(args.model_dir, "centroids.json"), "w") as handle:
        json.dump(centroids, handle)
    print(f"trained {sorted(centroids)} from {args.train} as uid {os.getuid()}", flush=True)
