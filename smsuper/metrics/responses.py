"""serve: smsuper_http_requests_total from what nginx answered, counted by PID 1.

nginx writes every request it answers to its access log, which PID 1 already
relays (serve/access_log.py); each line starts with the route label and the
status (serve/nginx.py's log_format), and PID 1 adds it here. So the count
holds what clients got, whoever made the answer: a worker's 200 or 415 as
well as nginx's own 413, 502 when a worker died, 504 when it was too slow,
405, 414, 431, 400 ... and /ping. With nginx in front, this is the one source
of the series: the workers count nothing themselves (metrics/worker/serving.py), so
no request is counted twice. Without nginx the workers count what they answer.

The figures are up to a second late (nginx flushes its log buffer once a
second) and an nginx killed with SIGKILL takes its unflushed second with it.
Label values stay bounded whatever arrives in the FIFO: a route outside the
table's (serve/routes.py) is `other`, and a code must be three digits.
"""

from __future__ import annotations

from ..serve import routes
from .exposition import Family, counter

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Tuple

HELP = ("HTTP requests answered, by route and status code: what the clients got (with nginx in front, "
        "from its access log, so nginx's own answers such as 413, 502 and 504 count too).")


class ResponseCounts:
    def __init__(self) -> None:
        self.counts: Dict[Tuple[str, str], int] = {}
        # nginx wrote the label of the route table's row (nginx.py); anything else is `other`.
        self.labels = {route.label.encode("ascii"): route.label
                       for route in (*routes.TABLE, *routes.MULTI_MODEL_TABLE)}

    def add(self, route: bytes, code: bytes) -> None:
        if len(code) != 3 or not code.isdigit():
            return
        key = (self.labels.get(route, routes.OTHER), code.decode("ascii"))
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> List[Family]:
        family = counter("http_requests", HELP)
        for (route, code), number in sorted(self.counts.items()):
            family.add(number, route=route, code=code)
        return [family]
