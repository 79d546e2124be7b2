"""What one body costs each stack's default CSV decoder and encoder, alone, in one process:
`python codec_cost.py PYZ BODY.csv...`; prints one JSON object, CPU microseconds per call.

A diagnostic for the real-model figure (not judged): the decode and encode each stack runs
for every request, without HTTP, workers or the model around them. smsuper's codecs come from
the pyz itself (found by file name, wherever the package keeps them); the seed-style stack's
are pandas' read_csv and to_csv as its predictor calls them; the toolkit's are
sagemaker_inference's decoder and encoder.
"""
import importlib
import io
import json
import statistics
import sys
import time
import timeit
import zipfile


def smsuper_codecs(pyz):
    with zipfile.ZipFile(pyz) as archive:
        names = [n for n in archive.namelist() if n.startswith("smsuper/") and n.endswith("/codecs.py")]
    if len(names) != 1:
        raise SystemExit(f"expected one smsuper/**/codecs.py in {pyz}, found {names}")
    sys.path.insert(0, pyz)
    return importlib.import_module(names[0][:-3].replace("/", "."))


def cost(function, budget=0.3):
    """Median CPU microseconds per call over 5 repeats of about `budget` CPU seconds in all: CPU
    time, not wall time, so that other work on the machine hardly changes it."""
    timer = timeit.Timer(function, timer=time.process_time)
    number = max(1, int(budget / 5 / max(timeit.timeit(function, number=3) / 3, 1e-7)))
    return round(statistics.median(t / number * 1e6 for t in timer.repeat(number=number, repeat=5)), 1)


def main(pyz, paths):
    codecs = smsuper_codecs(pyz)
    import numpy as np
    import pandas as pd
    from sagemaker_inference import decoder, encoder

    results = {}
    for path in paths:
        with open(path, "rb") as handle:
            body = handle.read()
        text = body.decode("utf-8")
        labels = np.zeros(text.count("\n"), dtype=np.int64)  # what the classifier answers
        results[path.rsplit("/", 1)[-1]] = {
            "decode_us": {
                "smsuper": cost(lambda: codecs.decode(body, "text/csv")),
                "seed-style": cost(lambda: pd.read_csv(io.StringIO(text), header=None).values),
                "official-toolkit": cost(lambda: decoder.decode(text, "text/csv")),
            },
            "encode_us": {
                "smsuper": cost(lambda: codecs.encode(labels, "text/csv")),
                "seed-style": cost(lambda: pd.DataFrame({"results": labels}).to_csv(io.StringIO(), header=False,
                                                                                      index=False)),
                "official-toolkit": cost(lambda: encoder.encode(labels, "text/csv")),
            },
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
