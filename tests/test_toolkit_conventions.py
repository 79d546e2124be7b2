"""Handlers written for the official toolkits run unchanged.

The conventions of sagemaker-inference-toolkit (and the PyTorch, scikit-learn
and Hugging Face containers built on it): text/csv and application/json bodies
reach input_fn and transform_fn as str, NPY answers carry string labels without
pickle, CSV prints float32 values at their own precision, each worker finds its
GPU in context.system_properties["gpu_id"], the seed's MODEL_SERVER_* variables
still work; and application/jsonlines in and out.

Through the real stack (the built pyz as PID 1, nginx, gunicorn), on an
interpreter with numpy and on one without it, plus direct tests.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import error_of, eventually, host_pid, post, start_stack  # noqa: E402

from smsuper import settings  # noqa: E402
from smsuper.serve.worker import codecs, npy  # noqa: E402
from smsuper.serve.config import resolve  # noqa: E402
from smsuper.serve.worker.context import Context  # noqa: E402
from smsuper.serve.errors import BadRequest, ServeError  # noqa: E402

try:
    import numpy
except ImportError:
    numpy = None

needs_numpy = pytest.mark.skipif(numpy is None, reason="numpy is not installed")

# ---- the default input_fn / output_fn, with numpy and without -------------------------------

DEFAULTS_MODEL = """
def model_fn(model_dir):
    return None

def predict_fn(data, model, context):
    if not (isinstance(data, dict) and "emit" in data):
        return data
    what = data["emit"]
    if what == "properties":
        return context.system_properties
    try:
        import numpy
    except ImportError:
        numpy = None
    if what == "labels":  # what a classifier with string classes predicts
        labels = ["setosa", "virginica", "versicolor"]
        return numpy.array(labels, dtype=object) if numpy is not None else labels
    if what == "objects":
        objects = [{"a": 1}, {"b": 2}]
        return numpy.array(objects, dtype=object) if numpy is not None else objects
    if what == "object-ints":
        return numpy.array([1, 2, 3], dtype=object)
    if what == "object-numbers":
        return numpy.array([[1, 2.5], [3, 4]], dtype=object)
    if what == "float32":
        return numpy.array([[0.3, 1.1], [2.7, 0.1]], dtype=numpy.float32)
    if what == "float32-scalars":
        return [numpy.float32(0.3), numpy.float32(0.7)]
    if what == "float16":
        return numpy.array([0.1, 0.2], dtype=numpy.float16)
    if what == "float64":
        return numpy.array([0.1, 0.3])
    if what == "torch":
        import torch
        return torch.tensor([[0.3, 0.7], [0.1, 0.9]])
    raise ValueError(what)
"""


@pytest.fixture(scope="module", params=["numpy", "plain"])
def defaults(request, pyz, tmp_path_factory):
    stack = start_stack(pyz, tmp_path_factory.mktemp(f"defaults-{request.param}"), DEFAULTS_MODEL, request.param)
    stack.mode = request.param
    yield stack
    stack.close()


def emit(server, what: str, accept: str) -> requests.Response:
    return post(server, json.dumps({"emit": what}), "application/json", accept=accept)


@pytest.mark.slow
def test_string_labels_as_npy_need_no_pickle(defaults):
    response = emit(defaults, "labels", "application/x-npy")
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "application/x-npy"
    # The pure-Python reader understands them, and numpy reads them without allow_pickle.
    assert npy.read(response.content) == ["setosa", "virginica", "versicolor"]
    if numpy is not None:
        labels = numpy.load(io.BytesIO(response.content), allow_pickle=False)
        assert labels.dtype == numpy.dtype("<U10") and labels.tolist() == ["setosa", "virginica", "versicolor"]


@pytest.mark.slow
def test_arbitrary_objects_are_still_refused_as_npy(defaults):
    response = emit(defaults, "objects", "application/x-npy")
    assert response.status_code == 500
    assert "pickle" in error_of(response)


@pytest.mark.slow
@pytest.mark.parametrize("defaults", ["numpy"], indirect=True)  # object arrays exist only with numpy
def test_number_object_arrays_as_npy(defaults):
    ints = emit(defaults, "object-ints", "application/x-npy")
    assert ints.status_code == 200, ints.text[:300]
    array = numpy.load(io.BytesIO(ints.content), allow_pickle=False)
    assert array.dtype == numpy.int64 and array.tolist() == [1, 2, 3]
    mixed = emit(defaults, "object-numbers", "application/x-npy")
    assert mixed.status_code == 200, mixed.text[:300]
    array = numpy.load(io.BytesIO(mixed.content), allow_pickle=False)
    assert array.dtype == numpy.float64 and array.tolist() == [[1.0, 2.5], [3.0, 4.0]]


@pytest.mark.parametrize("defaults", ["numpy"], indirect=True)  # float32 exists only with numpy
@pytest.mark.parametrize("what, expected", [
    ("float32", "0.3,1.1\n2.7,0.1\n"),
    ("float32-scalars", "0.3\n0.7\n"),
    ("float16", "0.1\n0.2\n"),
    ("float64", "0.1\n0.3\n"),  # float64 keeps its own (longer) precision
    ("torch", "0.3,0.7\n0.1,0.9\n"),
])
@pytest.mark.slow
def test_csv_prints_each_float_at_its_own_precision(defaults, what, expected):
    response = emit(defaults, what, "text/csv")
    assert response.status_code == 200, response.text[:300]
    assert response.text == expected


@pytest.mark.slow
def test_jsonlines_in_and_out(defaults):
    body = '[1, 2]\n[3, 4]\n\n{"a": "x"}\n'
    response = post(defaults, '[1, 2]\n[3, 4]\n', "application/jsonlines", accept="application/jsonlines")
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "application/jsonlines"
    assert response.text == "[1,2]\n[3,4]\n"
    mixed = post(defaults, body, "application/jsonlines", accept="application/jsonlines")
    assert mixed.status_code == 200, mixed.text[:300]
    assert mixed.text == '[1,2]\n[3,4]\n{"a":"x"}\n'
    as_json = post(defaults, body, "application/jsonlines")
    assert as_json.json() == [[1, 2], [3, 4], {"a": "x"}]
    one_object = post(defaults, '{"k": [1, 2]}', "application/json", accept="application/jsonlines")
    assert one_object.text == '{"k":[1,2]}\n'


@pytest.mark.slow
def test_jsonlines_bad_line_is_400_naming_it(defaults):
    response = post(defaults, '[1]\n[2]\n{oops\n', "application/jsonlines")
    assert response.status_code == 400
    assert "line 3" in error_of(response)


@pytest.mark.slow
def test_system_properties_on_a_cpu_host(defaults):
    response = emit(defaults, "properties", "application/json")
    assert response.status_code == 200, response.text[:300]
    properties = response.json()
    assert "gpu_id" in properties and properties["gpu_id"] is None
    assert properties["model_dir"] == str(defaults.base / "model")


# ---- text bodies reach user code as str --------------------------------------------------

# In the style of the official examples' sklearn_abalone_featurizer.py: pandas reads the
# body through StringIO, which only takes str.
ABALONE_FEATURIZER = """
import json
from io import StringIO

import numpy as np
import pandas as pd

FEATURES = ["sex", "length", "diameter", "height", "whole_weight", "shucked_weight",
            "viscera_weight", "shell_weight"]
LABEL = "rings"


class Featurizer:
    # Stands in for the example's fitted ColumnTransformer: one-hot sex, numbers as they are.
    def transform(self, df):
        sexes = ["F", "I", "M"]
        onehot = np.array([[1.0 if sex == s else 0.0 for s in sexes] for sex in df["sex"]])
        return np.hstack([df[FEATURES[1:]].to_numpy(dtype=float), onehot])


def model_fn(model_dir):
    return Featurizer()


def input_fn(input_data, content_type):
    if content_type == "text/csv":
        df = pd.read_csv(StringIO(input_data), header=None)
        if len(df.columns) == len(FEATURES) + 1:
            df.columns = FEATURES + [LABEL]  # a labelled example
        else:
            df.columns = FEATURES
        return df[FEATURES]
    if content_type == "application/json":
        return pd.read_json(StringIO(input_data), orient="records")[FEATURES]
    # Anything else: say what arrived, so the test can see which types stay bytes.
    return {"type": type(input_data).__name__, "content_type": content_type}


def predict_fn(input_data, model):
    if isinstance(input_data, dict):
        return input_data
    return model.transform(input_data)


def output_fn(prediction, accept):
    if isinstance(prediction, dict):
        return json.dumps(prediction), "application/json"
    if accept == "application/json":
        return json.dumps({"instances": [{"features": row} for row in prediction.tolist()]}), accept
    if accept == "text/csv":
        return "\\n".join(",".join(str(x) for x in row) for row in prediction.tolist()), accept
    raise RuntimeError("{} accept type is not supported by this script.".format(accept))
"""

ABALONE_ROWS = "M,0.455,0.365,0.095,0.514,0.2245,0.101,0.15,15\nI,0.33,0.255,0.08,0.205,0.0895,0.0395,0.055,7\n"
ABALONE_FEATURES = [[0.455, 0.365, 0.095, 0.514, 0.2245, 0.101, 0.15, 0.0, 0.0, 1.0],
                    [0.33, 0.255, 0.08, 0.205, 0.0895, 0.0395, 0.055, 0.0, 1.0, 0.0]]


@pytest.fixture(scope="module")
def abalone(pyz, tmp_path_factory):
    pytest.importorskip("pandas")  # the handler's own dependency (pyproject's test extra)
    stack = start_stack(pyz, tmp_path_factory.mktemp("abalone"), ABALONE_FEATURIZER, "numpy")
    yield stack
    stack.close()


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["text/csv", "text/csv; charset=utf-8"])
def test_abalone_featurizer_reads_csv_through_stringio(abalone, content_type):
    response = post(abalone, ABALONE_ROWS, content_type)
    assert response.status_code == 200, response.text[:300]
    assert response.json() == {"instances": [{"features": row} for row in ABALONE_FEATURES]}


@pytest.mark.slow
def test_abalone_featurizer_reads_json_through_stringio(abalone):
    records = [dict(zip(["sex", "length", "diameter", "height", "whole_weight", "shucked_weight",
                         "viscera_weight", "shell_weight"], line.split(",")[:8])) for line in ABALONE_ROWS.split()]
    for record in records:
        for key in record:
            if key != "sex":
                record[key] = float(record[key])
    response = post(abalone, json.dumps(records), "application/json", accept="text/csv")
    assert response.status_code == 200, response.text[:300]
    rows = [[float(x) for x in line.split(",")] for line in response.text.splitlines()]
    assert rows == [pytest.approx(row) for row in ABALONE_FEATURES]  # pandas' JSON reader rounds a little


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["application/x-npy", "application/octet-stream", "application/jsonlines"])
def test_other_types_stay_bytes(abalone, content_type):
    response = post(abalone, b"\x93NUMPY-or-anything", content_type)
    assert response.status_code == 200, response.text[:300]
    assert response.json() == {"type": "bytes", "content_type": content_type}


@pytest.mark.slow
def test_text_body_that_is_not_utf8_is_400_before_user_code(abalone):
    response = post(abalone, b"M,0.4\xff\xfe,1\n", "text/csv")
    assert response.status_code == 400
    assert "UTF-8" in error_of(response) and "text/csv" in error_of(response)


# A transform_fn as the Hugging Face toolkit's tests write them.
HF_STYLE_TRANSFORM = """
import os

def model_fn(model_dir, context=None):
    return f"Loading {os.path.basename(__file__)}"

def transform_fn(model, input_data, content_type, accept, context=None):
    return f"output {input_data}"
"""


@pytest.fixture(scope="module")
def hf_style(pyz, tmp_path_factory):
    stack = start_stack(pyz, tmp_path_factory.mktemp("hf"), HF_STYLE_TRANSFORM, "plain")
    yield stack
    stack.close()


@pytest.mark.parametrize("content_type, body, expected", [
    ("application/json", b"dummy", "output dummy"),
    ("text/csv", b"1,2\n", "output 1,2\n"),
    ("application/octet-stream", b"dummy", "output b'dummy'"),  # the toolkits pass other types as bytes
])
@pytest.mark.slow
def test_hf_style_transform_fn_gets_str(hf_style, content_type, body, expected):
    response = post(hf_style, body, content_type)
    assert response.status_code == 200, response.text[:300]
    assert response.text == expected


# ---- GPUs, and the seed's MODEL_SERVER_* variables ----------------------------------------

FAKE_NVIDIA_SMI = """#!/bin/sh
# nvidia-smi -L of a host with three GPUs
[ "$1" = "-L" ] || exit 9
echo "GPU 0: Tesla T4 (UUID: GPU-0a0a0a0a-0000-0000-0000-000000000000)"
echo "GPU 1: Tesla T4 (UUID: GPU-1b1b1b1b-0000-0000-0000-000000000000)"
echo "GPU 2: Tesla T4 (UUID: GPU-2c2c2c2c-0000-0000-0000-000000000000)"
"""

GPU_MODEL = """
import json, os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir, context):
    # Each worker records the GPU it was given, as the PyTorch docs' model_fn would use it.
    os.makedirs(os.path.join(BASE, "gpus"), exist_ok=True)
    path = os.path.join(BASE, "gpus", str(os.getpid()))
    with open(path + ".tmp", "w") as handle:
        json.dump(context.system_properties.get("gpu_id", "absent"), handle)
    os.rename(path + ".tmp", path)
    return None

def predict_fn(data, model, context):
    if isinstance(data, dict) and data.get("wait"):
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(BASE, "release")) and time.time() < deadline:
            time.sleep(0.05)
    return {"pid": os.getpid(), "gpu_id": context.system_properties["gpu_id"]}
"""


def recorded_gpus(base: Path) -> dict:
    directory = base / "gpus"
    if not directory.is_dir():
        return {}
    return {int(entry.name): json.loads(entry.read_text()) for entry in directory.iterdir()
            if not entry.name.endswith(".tmp")}


@pytest.mark.slow
def test_workers_get_gpus_round_robin_and_model_server_aliases(pyz, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tools / "nvidia-smi").chmod(0o755)
    # Three GPUs on the host, two of them visible to this container (CUDA numbers them 0 and 1);
    # three workers from the seed's variable, and its timeout.
    server = start_stack(pyz, tmp_path, GPU_MODEL, "plain", drop=("SAGEMAKER_MODEL_SERVER_WORKERS",),
                         PATH=f"{tools}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="0,2",
                         MODEL_SERVER_WORKERS="3", MODEL_SERVER_TIMEOUT="3")
    try:
        eventually(lambda: len(recorded_gpus(server.base)) == 3, "three workers to load the model")
        gpu_of = recorded_gpus(server.base)
        assert sorted(gpu_of.values()) == [0, 0, 1], gpu_of

        answer = post(server, "{}", "application/json").json()
        assert answer["gpu_id"] == gpu_of[answer["pid"]]  # requests see their worker's GPU too

        # A replacement takes the GPU its predecessor leaves, keeping the spread even.
        doomed = min(pid for pid, gpu in gpu_of.items() if gpu == 0)
        os.kill(host_pid(doomed, server.init_pid()), signal.SIGKILL)
        eventually(lambda: len(recorded_gpus(server.base)) == 4, "a replacement worker")
        newcomer = (set(recorded_gpus(server.base)) - set(gpu_of)).pop()
        assert recorded_gpus(server.base)[newcomer] == 0

        # MODEL_SERVER_TIMEOUT=3 is the request timeout.
        slow = post(server, json.dumps({"wait": True}), "application/json")
        assert slow.status_code == 504
        assert "=3 s" in error_of(slow)
    finally:
        (server.base / "release").touch()
        server.close()


def test_round_robin_choice():
    from smsuper.serve.master import gpus

    assert gpus.pick([], 0) is None
    chosen = []
    for _ in range(5):
        chosen.append(gpus.pick(chosen, 2))
    assert chosen == [0, 1, 0, 1, 0]
    assert gpus.pick([0, 1, 1], 2) == 0  # the freed slot is filled first
    assert gpus.pick([0, 0, 1, 1, 2], 3) == 2


def test_visible_gpus_from_cuda_visible_devices(tmp_path):
    from smsuper.serve.master import gpus

    proc = tmp_path / "proc"
    for bus in ("0000:00:1e.0", "0000:00:1f.0", "0000:00:20.0"):
        (proc / "driver" / "nvidia" / "gpus" / bus).mkdir(parents=True)
    assert gpus.visible_count({}, str(proc)) == 3
    assert gpus.visible_count({"CUDA_VISIBLE_DEVICES": "2"}, str(proc)) == 1
    assert gpus.visible_count({"PATH": "/nonexistent"}, str(tmp_path / "no-driver")) == 0


def test_context_system_properties_in_process():
    properties = Context(model_dir="/opt/ml/model").system_properties
    assert properties["model_dir"] == "/opt/ml/model"
    assert "gpu_id" in properties and properties["gpu_id"] is None


# ---- settings aliases ------------------------------------------------------------------------

def test_model_server_aliases_and_the_sagemaker_names_win():
    assert resolve({"MODEL_SERVER_WORKERS": "3", "MODEL_SERVER_TIMEOUT": "7"}).workers == 3
    assert resolve({"MODEL_SERVER_TIMEOUT": "7", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}).timeout == 7
    both = resolve({"MODEL_SERVER_WORKERS": "3", "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
                    "MODEL_SERVER_TIMEOUT": "7", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "9"})
    assert (both.workers, both.timeout) == (2, 9)


def test_a_bad_alias_value_is_named():
    with pytest.raises(settings.SettingError) as caught:
        settings.value("SAGEMAKER_MODEL_SERVER_TIMEOUT", {"MODEL_SERVER_TIMEOUT": "soon"})
    assert "MODEL_SERVER_TIMEOUT='soon'" in str(caught.value)


def test_aliases_are_in_the_settings_table():
    table = settings.markdown_table()
    row = next(line for line in table.splitlines() if "`SAGEMAKER_MODEL_SERVER_WORKERS`" in line)
    assert "`MODEL_SERVER_WORKERS`" in row
    assert "MODEL_SERVER_TIMEOUT" in settings.help_text()


# ---- the codecs directly ---------------------------------------------------------------------

@needs_numpy
def test_encode_csv_float32_like_the_toolkits():
    array = numpy.array([[0.3, 1e-8], [numpy.nan, 12345.678]], dtype=numpy.float32)
    assert codecs.encode(array, "text/csv") == b"0.3,1e-08\nnan,12345.678\n"


def test_encode_npy_strings_without_numpy(numpy_mode):
    data = codecs.encode(["a", "bcd", "é"], "application/x-npy")
    assert b"'descr': '<U3'" in data
    assert npy.read(data) == ["a", "bcd", "é"]
    with pytest.raises(ServeError, match="pickle"):
        codecs.encode([{"a": 1}], "application/x-npy")


def test_jsonlines_codec(numpy_mode):
    decoded = codecs.decode(b'[1, 2]\r\n[3, 4]\n', "application/jsonlines")
    assert (decoded.tolist() if hasattr(decoded, "tolist") else decoded) == [[1, 2], [3, 4]]
    assert codecs.decode('{"a": 1}\n"x"\n', "application/jsonlines") == [{"a": 1}, "x"]
    with pytest.raises(BadRequest, match="empty"):
        codecs.decode(b"\n\n", "application/jsonlines")
    assert codecs.encode([[1, 2], {"b": None}], "application/jsonlines") == b'[1,2]\n{"b":null}\n'
    assert codecs.encode([], "application/jsonlines") == b""


def test_default_decoders_take_str_as_well_as_bytes(numpy_mode):
    assert codecs.decode('{"a": [1, "x"]}', "application/json") == {"a": [1, "x"]}
    rows = codecs.decode("a,1\nb,2\n", "text/csv")
    assert rows == [["a", 1.0], ["b", 2.0]]


def test_text_for_handlers_decodes_only_the_toolkits_types():
    assert codecs.for_handlers(b"1,2", "text/csv") == "1,2"
    assert codecs.for_handlers(b"{}", "application/json") == "{}"
    assert codecs.for_handlers(b"{}", "application/jsonlines") == b"{}"
    assert codecs.for_handlers(b"\x93NUMPY", "application/x-npy") == b"\x93NUMPY"
    with pytest.raises(BadRequest, match="UTF-8"):
        codecs.for_handlers(b"\xff", "application/json")

