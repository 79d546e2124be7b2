"""Bad request bodies get the promised 400 with a JSON error, fast, never a 500 or a hang.

Through the real stack (the built pyz as PID 1, nginx, gunicorn), once on an
interpreter with numpy and once on one without it (the pure-Python codecs),
plus direct tests of the codecs. A request body may not buy more work than its
size justifies: an NPY header that claims a shape its data cannot fill is
refused before anything is allocated.

The servers here run under an address-space limit, so that a regression (a
reader that believes the header) ends in a MemoryError inside the server
instead of eating the machine.
"""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import error_of, eventually, free_port, post, start_stack  # noqa: E402

from smsuper.serve.worker import codecs, npy  # noqa: E402
from smsuper.serve.errors import BadRequest  # noqa: E402

try:
    import numpy
except ImportError:
    numpy = None

ADDRESS_SPACE_LIMIT = 3 << 30  # bytes: far above what a worker needs, far below the machine


# The default input_fn and output_fn, around a model that echoes its input, or emits
# what a request asks for.
ECHO_MODEL = """
def model_fn(model_dir):
    return None

def predict_fn(data, model):
    if isinstance(data, dict) and "emit" in data:
        what = data["emit"]
        if what == "numpy?":
            try:
                import numpy
            except ImportError:
                return False
            return True
        if what == "nonfinite":
            return {"scores": [float("nan"), float("inf"), -float("inf"), 0.5]}
        if what == "nonfinite-array":
            import numpy
            return numpy.array([numpy.nan, numpy.inf, -numpy.inf, 0.5])
    return data
"""


@pytest.fixture(scope="module", params=["numpy", "plain"])
def server(request, pyz, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"hardening-{request.param}")
    metrics_port = free_port()
    stack = start_stack(pyz, directory, ECHO_MODEL, request.param, ADDRESS_SPACE_LIMIT,
                        SMSUPER_METRICS_PORT=str(metrics_port))
    stack.mode = request.param
    stack.metrics_port = metrics_port
    yield stack
    stack.close()


def npy_with_header(shape: tuple, descr: str = "<f8", total: int = 128) -> bytes:
    """A version 1.0 NPY whose header claims `shape`, padded with zero bytes to `total` bytes."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    head = npy.MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")
    return head + b"\0" * max(0, total - len(head))


@pytest.mark.slow
def test_the_matrix_really_runs_with_and_without_numpy(server):
    # Each case below runs twice; make sure the two runs really differ.
    response = post(server, json.dumps({"emit": "numpy?"}), "application/json")
    assert response.status_code == 200
    assert response.json() is (server.mode == "numpy")


# ---- JSON nested too deeply -----------------------------------------------------------------

@pytest.mark.slow
def test_deeply_nested_json_is_400_not_a_traceback(server):
    depth = 100_000  # deeper than any CPython's recursion limit lets json parse
    response = post(server, "[" * depth + "]" * depth, "application/json")
    assert response.status_code == 400, response.text[:300]
    assert "nest" in error_of(response)
    assert "RecursionError" not in server.stderr()


@pytest.mark.slow
def test_nesting_the_parser_can_take_still_works(server):
    response = post(server, "[" * 50 + "1" + "]" * 50, "application/json")
    assert response.status_code == 200
    assert response.text == "[" * 50 + "1" + "]" * 50


# ---- NPY headers that lie about their size --------------------------------------------------

@pytest.mark.slow
def test_npy_claiming_an_impossible_shape_is_a_fast_400(server):
    body = npy_with_header((10 ** 6, 10 ** 6))  # 8 TB of float64 claimed by 128 bytes
    response = post(server, body, "application/x-npy")
    assert response.status_code == 400, response.text[:300]
    error = error_of(response)
    assert "(1000000, 1000000)" in error and "128" in error
    assert "MemoryError" not in server.stderr()


@pytest.mark.slow
def test_npy_with_a_huge_empty_shape_is_a_fast_400(server):
    # No data at all, but a reader that believed it would build 10**9 empty rows.
    body = npy_with_header((10 ** 9, 0))
    assert len(body) == 128
    response = post(server, body, "application/x-npy")
    assert response.status_code == 400, response.text[:300]
    assert "(1000000000, 0)" in error_of(response)


@pytest.mark.slow
def test_honest_npy_still_round_trips(server):
    body = npy.write([[1.5, 2.5], [3.5, 4.5]])
    response = post(server, body, "application/x-npy", accept="application/x-npy")
    assert response.status_code == 200
    assert npy.read(response.content) == [[1.5, 2.5], [3.5, 4.5]]
    empty = post(server, npy_with_header((3, 0)), "application/x-npy")
    assert empty.status_code == 200 and empty.json() == [[], [], []]


# ---- NaN and Infinity -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nonstandard_json_constants_are_refused_naming_the_value(server, token):
    response = post(server, f"[1.0, {token}]", "application/json")
    assert response.status_code == 400, response.text[:300]
    assert token in error_of(response)


def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"the answer holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_nonfinite_predictions_are_written_as_null(server):
    response = post(server, json.dumps({"emit": "nonfinite"}), "application/json")
    assert response.status_code == 200, response.text[:300]
    assert _strict(response.text) == {"scores": [None, None, None, 0.5]}
    if server.mode == "numpy":
        response = post(server, json.dumps({"emit": "nonfinite-array"}), "application/json")
        assert response.status_code == 200, response.text[:300]
        assert _strict(response.text) == [None, None, None, 0.5]


# ---- what the metrics and the log say ------------------------------------------------------

@pytest.mark.slow
def test_bad_requests_are_counted_as_400_and_logged_in_one_line(server):
    from helpers import parse, scrape, value

    def bad_requests() -> float:
        return value(parse(scrape(server.metrics_port)), "smsuper_http_requests_total",
                     route="/invocations", code="400") or 0

    assert post(server, "[" * 100_000 + "]" * 100_000, "application/json").status_code == 400
    assert post(server, npy_with_header((10 ** 9, 0)), "application/x-npy").status_code == 400
    assert post(server, "[NaN]", "application/json").status_code == 400
    eventually(lambda: bad_requests() == server.answered[400], "every 400 answered to be counted")
    log = server.stdout() + server.stderr()
    assert "POST /invocations: 400: the request body nests" in log
    assert "POST /invocations: 400: the NPY header claims shape (1000000000, 0)" in log
    assert "POST /invocations: 400: the JSON body holds NaN" in log
    assert "Traceback" not in log


# ---- the opt-in: Python's JSON dialect, both ways --------------------------------------------

def test_allow_nan_setting_reads_and_writes_pythons_spelling(tmp_path):
    from helpers import client_for

    code = textwrap.dedent(ECHO_MODEL)
    body = "[1.0, NaN, -Infinity]"
    strict = client_for(tmp_path / "strict", code)
    assert strict.post("/invocations", data=body, content_type="application/json").status_code == 400
    lenient = client_for(tmp_path / "lenient", code, SMSUPER_JSON_ALLOW_NAN="true")
    response = lenient.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 200, response.data
    assert response.data == b"[1.0,NaN,-Infinity]"
    response = lenient.post("/invocations", json={"emit": "nonfinite"})
    assert response.data == b'{"scores":[NaN,Infinity,-Infinity,0.5]}'
    # The strict one is still strict: the setting belongs to its service, not to the process.
    assert strict.post("/invocations", data=body, content_type="application/json").status_code == 400


# ---- the codecs directly --------------------------------------------------------------------

@pytest.mark.parametrize("shape, descr", [
    ((10 ** 6, 10 ** 6), "<f8"),  # more elements than the data holds
    ((10 ** 5, 0), "<f8"),  # no elements, but more rows than the body has bytes
    ((1,) * 100, "<f8"),  # more dimensions than numpy allows
    ((2, 2), "<U1000000"),  # few elements, each claimed far larger than the data
])
def test_decode_npy_refuses_shapes_the_body_cannot_justify(numpy_mode, shape, descr):
    with pytest.raises(BadRequest) as caught:
        codecs.decode(npy_with_header(shape, descr), "application/x-npy")
    assert "shape" in caught.value.message or "dimensions" in caught.value.message


def test_decode_json_names_the_constant_and_the_nesting(numpy_mode):
    with pytest.raises(BadRequest, match="Infinity"):
        codecs.decode(b'{"x": Infinity}', "application/json")
    with pytest.raises(BadRequest, match="nest"):
        codecs.decode(b"[" * 100_000 + b"]" * 100_000, "application/json")


# ---- CSV: the numeric shortcut reads what csv.reader reads ---------------------------------

CSV_BODIES = [
    "1,2\n3,4\n", "1.5, -2e3 ,nan\n", " 0.25\t,1_000\n", "1,2\n\n3,4", "1,2,\n", "1,2\n3\n", "a,1\n",
    '"1",2\n', "1,2\r\n3,4\r\n", "\n\n", "", "  \n", "inf,-Infinity\n", "1,\x002\n", "１,2\n",
    "1," + "9" * 200000 + "\n", "7\n" * 1000,
]


@pytest.mark.parametrize("body", CSV_BODIES, ids=[repr(body[:16]) for body in CSV_BODIES])
def test_csv_numbers_decode_as_csv_reader_reads_them(numpy_mode, body):
    from smsuper.serve.worker import codecs

    def outcome(read):
        try:
            value = read(body)
        except codecs.BadRequest as error:
            return "400", str(error)
        if hasattr(value, "tolist"):
            return "array", str(value.dtype), value.shape, repr(value.tolist())
        return type(value).__name__, repr(value)

    assert outcome(codecs.decode_csv) == outcome(codecs._csv_rows_read)
