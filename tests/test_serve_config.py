"""The serving config travels whole from PID 1 to the gunicorn master (serve/config.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper import settings  # noqa: E402
from smsuper.serve.config import CONFIG_VARIABLE, received, resolve  # noqa: E402

CHOSEN = {"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "42", "SMSUPER_GRACE_PERIOD": "12.5",
          "SMSUPER_WORKER_THREADS": "4", "SMSUPER_LOG_FORMAT": "json", "SMSUPER_NGINX": "/opt/nginx/sbin/nginx",
          "SMSUPER_RESTART_WINDOW": "30", "SAGEMAKER_BASE_DIR": "/somewhere/ml"}


def test_the_master_runs_with_what_pid1_resolved_not_with_its_own_environment():
    config = resolve(CHOSEN)
    # The master's environment says otherwise: what PID 1 decided still wins, field for field.
    environ = config.handed_over({"SAGEMAKER_MODEL_SERVER_WORKERS": "9", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "5"})
    assert received(environ) == config
    assert (config.workers, config.timeout, config.grace_period, config.threads) == (3, 42, 12.5, 4)
    assert config.worker_timeout == 47 and config.stop_deadline == 10.5


def test_the_handover_is_gone_before_workers_or_user_code_could_see_it():
    environ = resolve(CHOSEN).handed_over({"PATH": "/usr/bin"})
    assert CONFIG_VARIABLE in environ
    received(environ)
    assert environ == {"PATH": "/usr/bin"}


def test_a_master_started_by_hand_says_what_is_missing():
    with pytest.raises(settings.SettingError, match=f"{CONFIG_VARIABLE} is not set.*smsuper serve"):
        received({})
