"""Train the real model and write the request bodies: `python make_sklearn_model.py MODEL_DIR BODIES_DIR`.

A logistic regression on a 20-feature classification data set generated here
(make_classification, fixed seed), saved with joblib as MODEL_DIR/model.joblib, the file
every stack of the figure loads. BODIES_DIR/rows-1.csv and rows-100.csv are CSV requests of
1 and 100 rows drawn from the same data, numbers at 6 decimals as a client would send them.
"""
import os
import sys

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

FEATURES = 20


def main(model_dir: str, bodies_dir: str) -> None:
    features, labels = make_classification(n_samples=5000, n_features=FEATURES, n_informative=10,
                                           random_state=0)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    joblib.dump(model, os.path.join(model_dir, "model.joblib"))
    rows = np.random.default_rng(0).choice(features, 100, replace=False)
    for count in (1, 100):
        text = "".join(",".join(f"{value:.6f}" for value in row) + "\n" for row in rows[:count])
        with open(os.path.join(bodies_dir, f"rows-{count}.csv"), "w") as handle:
            handle.write(text)
    print(f"accuracy on its training data {model.score(features, labels):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
