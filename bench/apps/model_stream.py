"""The streaming model of bench/streaming.py: {"chunks": N, "size": S} streams N chunks of S bytes."""


def model_fn(model_dir):
    return None


def predict_fn(data, model):
    chunk = b"x" * (int(data.get("size", 64)) - 1) + b"\n"
    return (chunk for _ in range(int(data["chunks"])))
