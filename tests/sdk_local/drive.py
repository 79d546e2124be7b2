"""Drive the SageMaker Python SDK's local mode the way a user's notebook does, then report.

    python drive.py SPEC.json

SPEC names the scenario and its inputs; the answer (what the SDK returned, the predictions, the
time each step took) goes to SPEC's "result" path as JSON. The test (tests/test_sdk_local_mode.py)
runs this inside the network namespace of its engine (tests/sdk_engine.py) and checks the result.
Everything the SDK does stays on this machine: fake credentials and region, file:// inputs and
outputs, local code, telemetry off.
"""

import json
import logging
import sys
import time

import sagemaker
from sagemaker.deserializers import CSVDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.serializers import CSVSerializer
from sagemaker.sklearn import SKLearn

ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"  # a full ARN: the SDK does not ask IAM
ROWS = [[1.0, 1.5], [9.0, 8.5]]  # one flower near each centroid


def session(spec):
    sdk_config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    local = LocalSession(sagemaker_config=sdk_config)
    local.config = {"local": {
        "local_code": True,                       # mount source_dir, upload nothing
        "container_root": spec["container_root"],  # where the SDK makes /opt/ml for each container
        # podman 4.3 gives compose-made containers a stop timeout of 0: give the platform's 30 s.
        "container_config": {"stop_grace_period": "30s"},
    }}
    return local


def serve_and_predict(estimator, spec, steps, **deploy):
    t0 = time.monotonic()
    predictor = estimator.deploy(initial_instance_count=1, instance_type="local", serializer=CSVSerializer(),
                                 deserializer=CSVDeserializer(), env=spec["env"], **deploy)
    steps["deploy"] = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        predictions = predictor.predict(ROWS)
        steps["predict"] = time.monotonic() - t0
    finally:
        t0 = time.monotonic()
        predictor.delete_endpoint()
        steps["delete_endpoint"] = time.monotonic() - t0
    return predictions


def main(spec_path):
    spec = json.load(open(spec_path))
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="sdk %(asctime)s %(name)s: %(message)s")
    local = session(spec)
    scenario = spec["scenario"]
    common = dict(role=ROLE, instance_type="local", output_path=spec["output_path"], sagemaker_session=local,
                  environment=spec["env"])
    steps = {}
    result = {"sdk_version": sagemaker.__version__, "scenario": scenario, "steps": steps}

    if scenario == "framework":
        estimator = SKLearn(entry_point="train.py", source_dir=spec["source_dir"], image_uri=spec["image"],
                            instance_count=1, hyperparameters={"scale": 1}, **common, **spec.get("framework", {}))
    else:
        estimator = Estimator(image_uri=spec["image"], instance_count=spec.get("instance_count", 1), **common)

    t0 = time.monotonic()
    estimator.fit({"train": spec["train"]})
    steps["fit"] = time.monotonic() - t0
    result["model_data"] = estimator.model_data
    result["job_name"] = estimator.latest_training_job.name

    if spec.get("deploy"):
        result["predictions"] = serve_and_predict(estimator, spec, steps, **spec.get("deploy_args", {}))
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
    print(f"drive: {scenario} done: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
