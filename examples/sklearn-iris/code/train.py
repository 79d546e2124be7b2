"""Train a decision tree on the iris data, in the style of SageMaker's framework containers.

smsuper runs this as `python train.py --max_depth 3 --max_leaf_nodes 8` (the
hyperparameters, sorted) with the SM_* variables set: SM_CHANNEL_TRAIN holds
the train channel's files, SM_MODEL_DIR is where the model must go (everything
written there becomes model.tar.gz). The same script runs unchanged on
SageMaker, under smsuper locally, and in the official scikit-learn image.
"""

import argparse
import csv
import glob
import json
import os

import joblib
import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier, export_text

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def parse_args():
    parser = argparse.ArgumentParser()
    # Hyperparameters arrive as command-line arguments; both spellings are accepted.
    parser.add_argument("--max-depth", "--max_depth", dest="max_depth", type=int, default=None)
    parser.add_argument("--max-leaf-nodes", "--max_leaf_nodes", dest="max_leaf_nodes", type=int, default=None)
    parser.add_argument("--criterion", default="gini")
    parser.add_argument("--random-state", "--random_state", dest="random_state", type=int, default=0)
    # The platform's directories, with the defaults the SM_* variables give.
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    return parser.parse_args()


def read_channel(directory):
    """Every CSV file in the channel: label in the first column, then the four measurements."""
    files = sorted(glob.glob(os.path.join(directory, "*.csv")))
    if not files:
        raise ValueError(f"no CSV files in the train channel {directory}")
    labels, rows = [], []
    for path in files:
        with open(path, newline="") as handle:
            for record in csv.reader(handle):
                if record:
                    labels.append(record[0])
                    rows.append([float(value) for value in record[1:]])
    return np.asarray(rows), np.asarray(labels)


def main():
    args = parse_args()
    print(f"hyperparameters: {json.loads(os.environ.get('SM_HPS', '{}'))}")
    print(f"training on {os.environ.get('SM_NUM_CPUS', '?')} CPU(s), host {os.environ.get('SM_CURRENT_HOST', '?')}")

    features, labels = read_channel(args.train)
    print(f"read {len(labels)} rows from {args.train}")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=args.random_state, stratify=labels)

    model = DecisionTreeClassifier(max_depth=args.max_depth, max_leaf_nodes=args.max_leaf_nodes,
                                   criterion=args.criterion, random_state=args.random_state)
    model.fit(x_train, y_train)
    accuracy = accuracy_score(y_test, model.predict(x_test))
    # One line a metric definition can parse: {"Name": "validation:accuracy", "Regex": "accuracy=([0-9.]+)"}
    print(f"validation: accuracy={accuracy:.4f} on {len(y_test)} held-out rows")
    print(export_text(model, feature_names=FEATURES).rstrip())

    os.makedirs(args.model_dir, exist_ok=True)
    path = os.path.join(args.model_dir, "model.joblib")
    joblib.dump(model, path)
    print(f"model saved to {path}")

    os.makedirs(args.output_data_dir, exist_ok=True)
    with open(os.path.join(args.output_data_dir, "metrics.json"), "w") as handle:
        json.dump({"accuracy": accuracy, "depth": int(model.get_depth()), "leaves": int(model.get_n_leaves())},
                  handle)


if __name__ == "__main__":
    main()
