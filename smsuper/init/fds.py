"""The descriptors a freshly forked child keeps.

Used between fork and exec by spawn.py, and by the multi-model template when it
forks a model's master (serve/multimodel/master/template_server.py): neither child
may keep a descriptor its parent held (a listener, another model's pipe).
"""

from __future__ import annotations

import os


def close_fds_except(keep: set) -> None:
    """Close every descriptor of this process but those in `keep`."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
