"""The real model's handler module, the same file for smsuper and the official toolkit:
model_fn and predict_fn only, so each stack's own default input_fn/output_fn decode the CSV
body and encode the predictions.

np.atleast_2d: the toolkit's CSV decoder (numpy.genfromtxt) gives a 1-D array for a
one-row body, which scikit-learn refuses; smsuper's is 2-D already, so it costs nothing there.
"""
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    return model.predict(np.atleast_2d(data))
