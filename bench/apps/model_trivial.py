"""smsuper's handler module for the benchmark: the trivial model.

The default input_fn/output_fn decode and encode JSON; predict_fn returns its
input, or first sleeps when asked to ({"sleep": seconds}) so the benchmark can
hold every worker busy.
"""
import time


def model_fn(model_dir):
    return "trivial"


def predict_fn(data, model):
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(float(data["sleep"]))
    return data
