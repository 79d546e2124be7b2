"""The download child: `python smsuper.pyz _s3-download s3://BUCKET/KEY`.

Runs in its own process, started by remote.py in PID 1, as the workload's
user and with the image's own Python, so the boto3 it imports is the image's
(smsuper bundles none). It writes the object to its stdout, which PID 1 made
an unnamed temporary file; anything else it says goes to stderr. It reads
its configuration the way the SageMaker training toolkit does: the region
from AWS_REGION, else SAGEMAKER_REGION; the endpoint from S3_ENDPOINT_URL;
credentials from boto3's own chain (environment, shared files, container
and instance endpoints).

Its last line on stderr, prefixed with REASON, says why it failed; the exit
code says what kind of failure it was (the codes below).
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Tuple

from .. import log, settings

REASON = "s3-download-failed: "
NO_BOTO3 = 3  # the image's Python cannot import boto3
WRONG_LOCATION = 2  # the URI names nothing this job may read (no such bucket or key, denied, no credentials)
FAILED = 1  # anything else: S3 unreachable, an unexpected answer, the disk


def parse(uri: str) -> Tuple[str, str]:
    """(bucket, key) of an s3:// URI, or ValueError saying what is wrong with it."""
    if not uri.startswith("s3://"):
        raise ValueError("not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError("an s3:// URI needs a bucket and a key: s3://BUCKET/KEY")
    return bucket, key


def _fail(code: int, reason: str) -> int:
    line = REASON + " ".join(reason.split()) + "\n"
    os.write(2, line.encode("utf-8", "replace"))
    return code


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"


def _bucket_exists(client, bucket: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        return str(error.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")
    except BotoCoreError:
        pass
    return True  # exists, or we may not ask: the key is what is missing, as far as we can tell


def _credentials_in_use(session) -> str:
    credentials = session.get_credentials()
    if credentials is None:
        return "none"
    return f"access key ending {credentials.access_key[-4:]}, from {credentials.method}"


def _client_error(error, client, session, bucket: str, key: str, where: str) -> Tuple[int, str]:
    answer = error.response or {}
    code = str(answer.get("Error", {}).get("Code", ""))
    message = answer.get("Error", {}).get("Message", "") or ""
    status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
        if code == "NoSuchBucket" or not _bucket_exists(client, bucket):
            return WRONG_LOCATION, f"the bucket {bucket} does not exist ({where})"
        return WRONG_LOCATION, f"the bucket {bucket} has no object {key} ({where})"
    if code in ("403", "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken") or status == 403:
        return WRONG_LOCATION, (f"S3 denied access ({code or status}{': ' + message if message else ''}): "
                                f"the credentials in use ({_credentials_in_use(session)}) may not read it, "
                                f"or it does not exist and they may not list the bucket ({where})")
    return FAILED, f"S3 answered {status} {code}{': ' + message if message else ''} ({where})"


def download(uri: str, out) -> int:
    try:
        import boto3
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError,
                                         NoCredentialsError, ReadTimeoutError)
    except ImportError as error:
        return _fail(NO_BOTO3, f"this image's Python ({sys.executable}) has no boto3 ({error})")
    try:
        bucket, key = parse(uri)
    except ValueError as error:
        return _fail(WRONG_LOCATION, str(error))
    region = os.environ.get("AWS_REGION") or os.environ.get("SAGEMAKER_REGION") or None
    endpoint = os.environ.get("S3_ENDPOINT_URL") or None
    try:
        session = boto3.session.Session()
        client = session.client("s3", region_name=region, endpoint_url=endpoint)
    except (BotoCoreError, ValueError) as error:
        return _fail(FAILED, f"cannot make an S3 client (region {region}, S3_ENDPOINT_URL {endpoint}): {error}")
    where = f"endpoint {client.meta.endpoint_url}, region {client.meta.region_name}"
    log.info(f"downloading {uri} ({where})")
    started = time.monotonic()
    try:
        client.download_fileobj(bucket, key, out)
        out.flush()
        size = os.fstat(out.fileno()).st_size
    except ClientError as error:
        return _fail(*_client_error(error, client, session, bucket, key, where))
    except NoCredentialsError:
        return _fail(WRONG_LOCATION, "no AWS credentials found: boto3 looked in the environment "
                                     "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the shared credentials and config "
                                     "files, the container credentials endpoint and the instance metadata")
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as error:
        return _fail(FAILED, f"cannot reach S3: {error}")
    except BotoCoreError as error:
        return _fail(FAILED, f"{type(error).__name__}: {error} ({where})")
    except OSError as error:
        return _fail(FAILED, f"cannot write the downloaded archive: {error}")
    log.info(f"downloaded {uri}: {_size(size)} in {time.monotonic() - started:.1f} s")
    return 0


def main(args: List[str]) -> int:
    try:
        log.configure(settings.value("SMSUPER_LOG_LEVEL"), settings.value("SMSUPER_LOG_FORMAT"))
    except settings.SettingError:
        pass  # PID 1 validated them already; the defaults do here
    if len(args) != 1:
        return _fail(FAILED, "usage: _s3-download s3://BUCKET/KEY (the object is written to stdout)")
    # The object goes to the file PID 1 gave us as stdout; a stray print (from
    # boto3 or a sitecustomize) goes to stderr instead of into the archive.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        out.seek(0)
        out.truncate()  # whatever reached stdout before this line is not part of the object
    except OSError:
        pass  # a pipe: nothing could have been written before us that we can undo
    with out:
        return download(args[0], out)
