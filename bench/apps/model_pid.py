"""Answers with the pid of the worker that served the request (counts worker restarts)."""
import os


def model_fn(model_dir):
    return None


def predict_fn(data, model):
    return {"pid": os.getpid()}
