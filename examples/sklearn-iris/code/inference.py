"""Serve the decision tree: smsuper calls model_fn once per worker, predict_fn per request.

There is no input_fn or output_fn: smsuper's defaults decode the request
(text/csv -> a 2-D float array, application/json -> an array) and encode the
answer in the type the client's Accept asks for (one class name per line in
CSV, a JSON list in JSON).
"""

import os

import joblib
import numpy as np


class BadInput(ValueError):
    status_code = 400  # smsuper answers 400 with this message instead of a 500


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    # JSON may also come as {"instances": [[...], ...]}, the shape other model servers use.
    if isinstance(data, dict):
        data = data.get("instances")
    try:
        rows = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        raise BadInput("the measurements must be numbers") from None
    if rows.ndim == 1:  # one flower: [5.1, 3.5, 1.4, 0.2]
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or rows.shape[1] != model.n_features_in_:
        raise BadInput(f"each flower needs {model.n_features_in_} measurements: "
                       "sepal length, sepal width, petal length, petal width (cm)")
    return model.predict(rows)
