"""The serving app from the source tree: routes, codecs, negotiation, errors, user code.

These run the Flask app (and the style B wrapper) in-process with a test
client; tests/test_serve.py runs the real stack (nginx, gunicorn, the pyz).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper.serve import nginx, readiness  # noqa: E402
from smsuper.serve import runtime as runtime_dir  # noqa: E402
from smsuper.serve.config import resolve  # noqa: E402
from smsuper.serve.worker import codecs, negotiation, npy  # noqa: E402
from smsuper.serve.worker.app import create_app  # noqa: E402

from helpers import IDENTITY, client_for, make_service, user_app_service  # noqa: E402

try:
    import numpy
except ImportError:  # the image may have no numpy: the pure-Python paths are tested either way
    numpy = None

needs_numpy = pytest.mark.skipif(numpy is None, reason="numpy is not installed")

BODY_LENGTH = """
def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    return str(len(body))
"""


def body_of(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.data)


# ---- negotiation ---------------------------------------------------------------------

def test_media_type_drops_parameters_and_case():
    assert negotiation.media_type("Text/CSV; charset=utf-8") == "text/csv"
    assert negotiation.media_type(None) == ""


@pytest.mark.parametrize("accept, expected", [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "application/json"),
    ("text/csv", "text/csv"),
    ("text/csv;q=0.5, application/x-npy", "application/x-npy"),
    ("application/x-npy;q=0.2, text/*;q=0.9", "text/csv"),
    ("image/png, text/csv;q=0.1", "text/csv"),
    ("application/json;q=0, text/csv;q=0.1", "text/csv"),
    ("image/png", None),
    ("application/json;q=0", None),
])
def test_accept_with_q_values(accept, expected):
    assert negotiation.choose(accept, "application/json", list(codecs.ENCODERS)) == expected


def test_default_accept_is_configurable():
    assert negotiation.choose("*/*", "text/csv", list(codecs.ENCODERS)) == "text/csv"
    assert negotiation.choose(None, "text/csv", list(codecs.ENCODERS)) == "text/csv"


def test_user_encoders_get_the_best_concrete_type():
    assert negotiation.choose("image/png;q=0.4, application/x-custom", "application/json", None) == \
        "application/x-custom"


# ---- NPY without numpy -----------------------------------------------------------------

@pytest.mark.parametrize("value", [[[1, 2, 3], [4, 5, 6]], [1.5, -2.0], [True, False], 7, [[0.5]]])
def test_pure_python_npy_round_trip(value):
    assert npy.read(npy.write(value)) == value


@needs_numpy
def test_pure_python_npy_agrees_with_numpy():
    for array in (numpy.arange(12, dtype=">i4").reshape(3, 4), numpy.asfortranarray(numpy.ones((2, 3))),
                  numpy.array([1, 2], dtype=numpy.uint8), numpy.float16([1.5, 2])):
        out = io.BytesIO()
        numpy.save(out, array)
        assert npy.read(out.getvalue()) == array.tolist()
    back = numpy.load(io.BytesIO(npy.write([[1, 2], [3, 4]])), allow_pickle=False)
    assert back.tolist() == [[1, 2], [3, 4]] and back.dtype == numpy.int64


def _pickled_object_npy(marker: Path) -> bytes:
    """An NPY of dtype object whose pickle would create `marker` if it were ever loaded."""

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return npy.MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pickle.dumps([Boom()])


def test_npy_objects_are_refused_without_unpickling(tmp_path, numpy_mode):
    marker = tmp_path / "unpickled"
    client = client_for(tmp_path)
    response = client.post("/invocations", data=_pickled_object_npy(marker),
                           headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 400
    assert "pickle" in body_of(response)["error"]
    assert not marker.exists()


# ---- codecs through the app ------------------------------------------------------------

def test_json_in_json_out(tmp_path, numpy_mode):
    client = client_for(tmp_path)
    response = client.post("/invocations", data="[[1, 2], [3, 4]]", content_type="application/json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.data) == [[1, 2], [3, 4]]


def test_json_objects_pass_through_as_parsed(tmp_path, numpy_mode):
    client = client_for(tmp_path)
    response = client.post("/invocations", json={"instances": [1, "a"]})
    assert json.loads(response.data) == {"instances": [1, "a"]}


def test_numeric_json_becomes_an_array_with_numpy(tmp_path):
    if numpy is None:
        pytest.skip("numpy is not installed")
    code = """
    def model_fn(model_dir):
        return None
    def predict_fn(data, model):
        return {"type": type(data).__name__, "shape": list(data.shape)}
    """
    response = client_for(tmp_path, code).post("/invocations", json=[[1, 2, 3]])
    assert json.loads(response.data) == {"type": "ndarray", "shape": [1, 3]}


def test_csv_with_parameters_in_content_type(tmp_path, numpy_mode):
    client = client_for(tmp_path)
    response = client.post("/invocations", data="1,2,3\n4,5,6\n",
                           headers={"Content-Type": "Text/CSV; charset=utf-8", "Accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv"
    assert response.data == b"1.0,2.0,3.0\n4.0,5.0,6.0\n"


def test_one_dimensional_prediction_is_one_csv_line_per_element(tmp_path, numpy_mode):
    code = """
    def model_fn(model_dir):
        return None
    def predict_fn(data, model):
        return [row[0] for row in data.tolist()] if hasattr(data, "tolist") else [row[0] for row in data]
    """
    response = client_for(tmp_path, code).post("/invocations", data="1,9\n2,9\n",
                                               headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    assert response.data == b"1.0\n2.0\n"


def test_npy_in_npy_out(tmp_path, numpy_mode):
    client = client_for(tmp_path)
    response = client.post("/invocations", data=npy.write([[1.5, 2.5]]),
                           headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-npy"
    assert npy.read(response.data) == [[1.5, 2.5]]


def test_accept_list_picks_the_best_supported(tmp_path):
    client = client_for(tmp_path)
    response = client.post("/invocations", json=[1, 2],
                           headers={"Accept": "image/png, text/csv;q=0.5, application/json;q=0.4"})
    assert response.headers["Content-Type"] == "text/csv"


def test_default_accept_from_the_setting(tmp_path):
    client = client_for(tmp_path, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="text/csv")
    response = client.post("/invocations", json=[1, 2], headers={"Accept": "*/*"})
    assert response.headers["Content-Type"] == "text/csv"
    assert response.data == b"1\n2\n"


# ---- errors --------------------------------------------------------------------------------

def test_unsupported_content_type_is_415(tmp_path):
    response = client_for(tmp_path).post("/invocations", data=b"\x89PNG", content_type="image/png")
    assert response.status_code == 415
    assert "image/png" in body_of(response)["error"]


def test_unsatisfiable_accept_is_406(tmp_path):
    response = client_for(tmp_path).post("/invocations", json=[1], headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert "image/png" in body_of(response)["error"]


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b"{not json"),
    ("application/json", b""),
    ("text/csv", b"1,2\n3\n"),
    ("text/csv", b"\xff\xfe\x00"),
    ("application/x-npy", b"not npy at all"),
])
def test_undecodable_body_is_400(tmp_path, numpy_mode, content_type, body):
    response = client_for(tmp_path).post("/invocations", data=body, content_type=content_type)
    assert response.status_code == 400
    assert body_of(response)["error"]


def test_user_code_error_is_500_with_short_body_and_traceback_in_log(tmp_path, capfd):
    code = """
    def model_fn(model_dir):
        return None
    def predict_fn(data, model):
        raise ValueError("bad shape " + "x" * 10)
    """
    response = client_for(tmp_path, code).post("/invocations", json=[1])
    assert response.status_code == 500
    error = body_of(response)["error"]
    assert "predict_fn" in error and "ValueError" in error and "bad shape" in error
    assert len(response.data) < 300
    logged = capfd.readouterr().err
    assert "Traceback" in logged and 'raise ValueError("bad shape "' in logged


def test_user_exception_with_status_code_keeps_it(tmp_path):
    code = """
    class Invalid(Exception):
        status_code = 422
    def model_fn(model_dir):
        return None
    def input_fn(body, content_type):
        raise Invalid("field 'age' is missing")
    """
    response = client_for(tmp_path, code).post("/invocations", json={})
    assert response.status_code == 422
    assert body_of(response) == {"error": "field 'age' is missing"}


def test_body_limit_holds_without_nginx_too(tmp_path):
    client = client_for(tmp_path, code=BODY_LENGTH, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    exact = client.post("/invocations", data=b"x" * (1 << 20), content_type="application/octet-stream")
    assert exact.status_code == 200 and exact.data == str(1 << 20).encode()
    response = client.post("/invocations", data=b"x" * ((1 << 20) + 1), content_type="application/octet-stream")
    assert response.status_code == 413 and body_of(response)["error"]


def test_unknown_route_and_wrong_method_are_json(tmp_path):
    client = client_for(tmp_path)
    assert client.get("/nope").status_code == 404
    assert "route" in body_of(client.get("/nope"))["error"]
    response = client.get("/invocations")
    assert response.status_code == 405
    assert body_of(response)["error"]


# ---- model loading ---------------------------------------------------------------------------

def test_ping_is_200_with_empty_body_once_loaded(tmp_path):
    response = client_for(tmp_path).get("/ping")
    assert response.status_code == 200 and response.data == b""


def test_model_fn_raising_fails_ping_and_invocations_and_logs_once(tmp_path, capfd):
    code = """
    def model_fn(model_dir):
        raise FileNotFoundError("model.joblib is missing")
    """
    runtime = runtime_dir.create(str(tmp_path / "run"))
    first = make_service(tmp_path, code, runtime)
    second = make_service(tmp_path, code, runtime)  # another worker, same failure
    assert first.state == second.state == "failed"
    client = create_app(first).test_client()
    ping = client.get("/ping")
    assert ping.status_code == 503 and "model.joblib is missing" in body_of(ping)["error"]
    response = client.post("/invocations", json=[1])
    assert response.status_code == 500
    assert "failed to load" in body_of(response)["error"] and "model.joblib is missing" in body_of(response)["error"]
    logged = capfd.readouterr().err
    assert logged.count("Traceback") == 1
    status = json.loads(Path(runtime.ping_status).read_text())
    assert status["status"] == "failed" and "model.joblib is missing" in status["error"]
    assert not readiness.is_ready(runtime)


def test_a_worker_still_loading_does_not_hide_another_workers_failure(tmp_path):
    # Workers load one after the other: the second one's "loading" must not replace the
    # failure the first one already reported, or /ping's reason flips back and forth.
    runtime = runtime_dir.create(str(tmp_path / "run"))
    make_service(tmp_path, "def model_fn(model_dir):\n    raise RuntimeError('weights file is corrupt')\n", runtime)
    # The next worker's model_fn runs after its load began, and looks at what /ping says then.
    seen = make_service(tmp_path, f"""
    import json
    def model_fn(model_dir):
        with open({runtime.ping_status!r}) as status:
            return json.load(status)
    """, runtime).model
    assert seen["status"] == "failed" and "weights file is corrupt" in seen["error"]


def test_missing_model_fn_is_a_load_failure_that_says_so(tmp_path):
    service = make_service(tmp_path, "def predict_fn(data, model):\n    return data\n")
    assert service.state == "failed" and "model_fn" in service.failure


def test_import_error_in_the_module_is_a_load_failure(tmp_path):
    service = make_service(tmp_path, "import not_a_module_anywhere\n")
    assert service.state == "failed" and "not_a_module_anywhere" in service.failure


# ---- user functions ------------------------------------------------------------------------

def test_context_gives_headers_and_sets_custom_attributes(tmp_path):
    code = """
    def model_fn(model_dir, context):
        return model_dir
    def predict_fn(data, model, context):
        context.set_custom_attributes("echo=" + (context.custom_attributes or ""))
        return {"model_dir": model, "inference_id": context.inference_id, "accept": context.accept}
    """
    client = client_for(tmp_path, code)
    response = client.post("/invocations", json=[1], headers={
        "X-Amzn-SageMaker-Custom-Attributes": "trace=1", "X-Amzn-SageMaker-Inference-Id": "id-7"})
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "echo=trace=1"
    assert json.loads(response.data) == {"model_dir": str(tmp_path / "ml" / "model"), "inference_id": "id-7",
                                         "accept": "application/json"}


def test_custom_attributes_are_not_echoed_unless_set(tmp_path):
    response = client_for(tmp_path).post("/invocations", json=[1],
                                         headers={"X-Amzn-SageMaker-Custom-Attributes": "a=1"})
    assert "X-Amzn-SageMaker-Custom-Attributes" not in response.headers


def test_toolkit_style_context_methods(tmp_path):
    code = """
    def model_fn(model_dir):
        return None
    def input_fn(body, content_type, context):
        return context.get_request_header(0, "x-amzn-sagemaker-custom-attributes")
    def predict_fn(data, model):
        return data
    def output_fn(prediction, accept, context):
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", prediction.upper())
        return prediction, "text/plain"
    """
    response = client_for(tmp_path, code).post("/invocations", data=b"x", content_type="text/plain",
                                               headers={"X-Amzn-SageMaker-Custom-Attributes": "k=v",
                                                        "Accept": "text/plain"})
    assert response.status_code == 200
    assert response.data == b"k=v" and response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "K=V"


def test_transform_fn_replaces_the_other_three(tmp_path):
    code = """
    def model_fn(model_dir):
        return 10
    def transform_fn(model, body, content_type, accept):
        return (str(model * len(body)) + " " + content_type + " " + accept).encode()
    """
    response = client_for(tmp_path, code).post("/invocations", data=b"abc",
                                               headers={"Content-Type": "application/x-thing; v=1",
                                                        "Accept": "text/x-answer"})
    assert response.status_code == 200
    assert response.data == b"30 application/x-thing text/x-answer"
    assert response.headers["Content-Type"] == "text/x-answer"


def test_default_predict_uses_the_models_predict(tmp_path):
    code = """
    class Model:
        def predict(self, data):
            return [sum(row) for row in data.tolist()] if hasattr(data, "tolist") else [sum(r) for r in data]
    def model_fn(model_dir):
        return Model()
    """
    response = client_for(tmp_path, code).post("/invocations", json=[[1, 2], [3, 4]])
    assert json.loads(response.data) == [3, 7]


def test_output_fn_may_return_plain_values(tmp_path):
    code = """
    def model_fn(model_dir):
        return None
    def predict_fn(data, model):
        return data
    def output_fn(prediction, accept):
        return {"wrapped": prediction}
    """
    response = client_for(tmp_path, code).post("/invocations", json=[1])
    assert json.loads(response.data) == {"wrapped": [1]}


# ---- /execution-parameters --------------------------------------------------------------------

def test_execution_parameters_from_settings(tmp_path):
    client = client_for(tmp_path, SAGEMAKER_MAX_PAYLOAD_IN_MB="20", SAGEMAKER_BATCH_STRATEGY="SINGLE_RECORD")
    assert json.loads(client.get("/execution-parameters").data) == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20}


def test_execution_parameters_from_a_user_function(tmp_path):
    code = IDENTITY + """
def execution_parameters_fn():
    return {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}
"""
    assert json.loads(client_for(tmp_path, code).get("/execution-parameters").data)["MaxPayloadInMB"] == 1


# ---- readiness -----------------------------------------------------------------------------------

def test_ready_flag_lives_while_any_worker_is_ready(tmp_path):
    runtime = runtime_dir.create(str(tmp_path / "run"))
    readiness.mark_ready(runtime, 11)
    readiness.mark_ready(runtime, 12)
    readiness.mark_gone(runtime, 11)
    assert readiness.is_ready(runtime)
    readiness.mark_gone(runtime, 12)
    assert not readiness.is_ready(runtime)
    readiness.mark_ready(runtime, 13)
    readiness.clear(runtime)
    assert not readiness.is_ready(runtime) and not os.listdir(runtime.ready_dir)


def test_one_reporter_per_message(tmp_path):
    runtime = runtime_dir.create(str(tmp_path / "run"))
    assert readiness.first_to_report(runtime, "boom")
    assert not readiness.first_to_report(runtime, "boom")
    assert readiness.first_to_report(runtime, "another boom")


# ---- nginx configuration --------------------------------------------------------------------------

def test_nginx_config_limits_and_timeouts(tmp_path):
    runtime = runtime_dir.create(str(tmp_path / "run"))
    config = resolve({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "42",
                      "SAGEMAKER_BIND_TO_PORT": "9999"})
    text = nginx.render(config, runtime, (1, 22, 1), 2)
    assert "client_max_body_size 6291456;" in text
    assert "proxy_read_timeout 42s;" in text and "listen 9999" in text
    assert f"if (-f {runtime.ready_flag})" in text
    # Every line of the access log starts with what PID 1 counts (PID 1 leaves /ping out).
    assert "log_format smsuper '$smsuper_route $status '" in text
    assert "large_client_header_buffers 4 8190;" in text  # under gunicorn's 8190-byte request line
    assert config.worker_timeout > config.timeout


def test_nginx_before_1_19_5_gets_no_e_flag(tmp_path):
    runtime = runtime_dir.RuntimeDir(str(tmp_path))
    assert "-e" not in nginx.argv("nginx", runtime, (1, 18, 0))
    assert "-e" in nginx.argv("nginx", runtime, (1, 22, 1))


# ---- style B: the user's own WSGI app --------------------------------------------------------------

SEED_PREDICTOR = (Path(__file__).parent / "apps" / "seed_predictor.py").read_text()


def test_seed_style_predictor_app(tmp_path, monkeypatch):
    (tmp_path / "ml" / "model").mkdir(parents=True)
    (tmp_path / "ml" / "model" / "factor.txt").write_text("10")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    service = user_app_service(tmp_path, SEED_PREDICTOR)
    assert service.ready
    from werkzeug.test import Client

    client = Client(service)
    response = client.post("/invocations", data="a,b\nc,d,e\n", content_type="text/csv")
    assert response.status_code == 200 and response.get_data() == b"20\n30"
    assert client.get("/ping").status_code == 200
    # No route of its own: smsuper's answer.
    assert json.loads(client.get("/execution-parameters").get_data())["MaxConcurrentTransforms"] == 3


def test_user_app_that_cannot_import_fails_clearly(tmp_path):
    service = user_app_service(tmp_path, "raise RuntimeError('no model here')\n")
    assert service.state == "failed" and "no model here" in service.failure
    from werkzeug.test import Client

    client = Client(service)
    assert client.get("/ping").status_code == 503
    response = client.post("/invocations", data=b"x")
    assert response.status_code == 500 and b"no model here" in response.get_data()
