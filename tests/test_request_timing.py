"""The request metrics time an answer until its body has been sent, not until the view returned it:
an answer whose body is an iterator (a streamed answer) counts its whole time."""

from __future__ import annotations

import pytest

from helpers import eventually, parse, scrape, serving_with_metrics, value

pytestmark = [pytest.mark.slow]  # a serving stack

PAUSE = 1.0
# The body's second chunk comes PAUSE seconds after the handler returned.
STREAMED = f"""
import time
from flask import Response

def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    def chunks():
        yield b"first\\n"
        time.sleep({PAUSE})
        yield b"second\\n"
    return Response(chunks(), content_type="text/plain")
"""


def test_an_answer_streamed_from_an_iterator_is_timed_until_its_last_chunk(serve):
    server, metrics_port = serving_with_metrics(serve, code=STREAMED)
    response = server.post([1])
    assert response.status_code == 200 and response.text == "first\nsecond\n"

    samples = {}

    def published() -> bool:
        samples.update(parse(scrape(metrics_port)))
        return (value(samples, "smsuper_http_request_duration_seconds_count", route="/invocations") or 0) >= 1

    eventually(published, "the request's latency in the scrape")
    # At least the pause: the clock ran while the server sent the body, not only while the view ran.
    assert value(samples, "smsuper_http_request_duration_seconds_sum", route="/invocations") >= PAUSE
    assert server.terminate() == 0
