"""What a bad setting's message says it accepts is what its parser accepts.

The text comes from the parser itself (settings.py), so a range the parser enforces is the
range the message, `--help` and the README's table name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper import settings  # noqa: E402


@pytest.mark.parametrize("name, above, bounds", [
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "1025", "an integer 1-1024"),
    ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "1025", "an integer 1-1024"),
    ("SMSUPER_WORKER_THREADS", "257", "an integer 1-256"),
])
def test_a_value_above_the_limit_is_refused_naming_the_limit(pyz, base_env, name, above, bounds):
    check = subprocess.run([sys.executable, str(pyz), "--check", "serve"], env=dict(base_env, **{name: above}),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert check.returncode == 2, check.stderr
    assert f"{name}={above!r} is not valid: it accepts {bounds}." in check.stderr, check.stderr


@pytest.mark.parametrize("setting", list(settings.SETTINGS.values()), ids=lambda s: s.name)
def test_the_limits_a_setting_names_are_the_ones_its_parser_keeps(setting):
    words = setting.accepts.split()
    limits = [word for word in words if "-" in word and word.replace("-", "").isdigit()]
    if "integer" not in words or not limits:
        return  # not a bounded integer: nothing to count
    low, high = (int(part) for part in limits[0].split("-"))
    assert setting.parse(str(low)) == low and setting.parse(str(high)) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(ValueError):
            setting.parse(str(outside))


def test_a_job_s_own_default_is_the_one_the_table_shows():
    grace = settings.SETTINGS["SMSUPER_GRACE_PERIOD"]
    assert grace.shown_default() == "110 for train, 25 for serve, 8 for other commands"
    assert [settings.value("SMSUPER_GRACE_PERIOD", {}, job) for job in ("train", "serve", "command")] == [110, 25, 8]
    assert settings.value("SMSUPER_LOG_LEVEL", {}, "command") == "warning"
    assert settings.value("SMSUPER_LOG_LEVEL", {}, "serve") == "info"
