"""Code named by an s3:// URI: downloaded by a child process, unpacked by PID 1.

The SageMaker SDK uploads the user's source_dir as sourcedir.tar.gz and names
it in the sagemaker_submit_directory hyperparameter (training) or in
SAGEMAKER_SUBMIT_DIRECTORY (framework models deployed with source_dir). The
toolkits download it with boto3 only when the code directory is empty, then
unpack it there; so does smsuper, split over two processes:

- the download child (s3_child.py) is the image's own Python, run with the
  workload's credentials (SMSUPER_USER): boto3 is imported there and never
  in PID 1, which would otherwise carry boto3's threads (PID 1 forks
  children, and forking a threaded process is unsafe), its tens of MB for
  the whole job, and run the image's site-packages as root;
- the child writes the object into an unnamed temporary file PID 1 opened
  and handed over as the child's stdout: no path anyone could swap, and the
  child needs write access nowhere;
- PID 1 unpacks that file into the code directory with archive.py's checks,
  as it unpacks a local sourcedir.tar.gz.

A stop (SIGTERM, SIGINT) during the download kills the child at once and
reaches the caller as its own exception (the training job's StopRequested,
or DownloadStopped where nothing else handles the signal).
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Dict, Iterator, List, Mapping, Optional

from .. import log, roles, selfcmd
from ..init.spawn import ChildSpec, Credentials, SpawnError, spawn
from ..init.stopguard import StopRequested
from . import archive, s3_child

CONFIG_ERROR = 2  # the job's exit code when the URI names nothing it can read, or boto3 is absent
DOWNLOAD_ERROR = 1  # S3 could not be reached or answered otherwise
POLL_INTERVAL = 0.5  # seconds between checks that the child is still there


class CodeDownloadError(Exception):
    """The code could not be downloaded or unpacked; the message names the URI and the fix."""

    kind = "CodeDownloadError"

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class DownloadStopped(Exception):
    """SIGTERM or SIGINT arrived during the download and nobody else handles it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


class Downloader:
    """Downloads as `credentials`, with `environ` (the workload's environment)."""

    def __init__(self, credentials: Optional[Credentials], environ: Mapping[str, str], region: Optional[str] = None):
        self.credentials = credentials
        self.environ: Dict[str, str] = dict(environ)
        if region:
            # The toolkit exports the sagemaker_region hyperparameter as SAGEMAKER_REGION before it downloads.
            self.environ["SAGEMAKER_REGION"] = str(region)

    def fetch(self, uri: str) -> BinaryIO:
        """The object at `uri` in an unnamed temporary file, positioned at its start.
        Raises CodeDownloadError with the child's reason (without the URI)."""
        try:
            output = tempfile.TemporaryFile(prefix="smsuper-code-")
        except OSError as error:
            raise CodeDownloadError(f"no temporary file for the download in {tempfile.gettempdir()} "
                                    f"(set TMPDIR to a writable directory): {error}", DOWNLOAD_ERROR) from None
        try:
            self._run_child(uri, output)
        except BaseException:
            output.close()
            raise
        output.seek(0)
        return output

    def _run_child(self, uri: str, output: BinaryIO) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        spec = ChildSpec(role=roles.S3_DOWNLOAD, argv=selfcmd.self_argv("_s3-download", uri), env=self.environ,
                         cwd="/", credentials=self.credentials)
        pid = 0
        said = _ChildOutput()
        try:
            with _stoppable():
                try:
                    pid = spawn(spec, stdout_fd=output.fileno(), stderr_fd=write_end)
                finally:
                    os.close(write_end)
                status = _wait(pid, read_end, said)
                pid = 0
        except SpawnError as error:
            raise CodeDownloadError(f"the download could not start: {error.message}", DOWNLOAD_ERROR) from None
        finally:
            os.close(read_end)
            if pid:  # stopped (or failed) while the child runs: it must not outlive us
                _kill(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return
        if code < 0:
            raise CodeDownloadError(f"the download was killed by {signal.Signals(-code).name}"
                                    f"{' (out of memory?)' if -code == signal.SIGKILL else ''}", DOWNLOAD_ERROR)
        reason = said.reason or said.last or f"the download exited with code {code}"
        if code == s3_child.NO_BOTO3:
            raise _NoBoto3(reason)
        raise CodeDownloadError(reason, CONFIG_ERROR if code == s3_child.WRONG_LOCATION else DOWNLOAD_ERROR)


class _NoBoto3(CodeDownloadError):
    def __init__(self, reason: str):
        super().__init__(reason, CONFIG_ERROR)


class _ChildOutput:
    """The child's stderr, copied to ours line by line; its REASON line is kept, not shown."""

    def __init__(self) -> None:
        self.pending = b""
        self.reason = ""
        self.last = ""  # the last line shown: a crash's exception line, when no reason came

    def feed(self, chunk: bytes) -> None:
        lines: List[bytes] = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()  # an unfinished line waits for its end
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        if self.pending:
            self._line(self.pending)
        self.pending = b""

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text.startswith(s3_child.REASON):
            self.reason = text[len(s3_child.REASON):].strip()
        elif text:
            self.last = text
            _write_stderr(line + b"\n")


def _wait(pid: int, fd: int, said: _ChildOutput) -> int:
    """Relay the child's stderr until it exits; its wait status. A process the child left
    behind holding the pipe open (a credential_process, say) cannot keep us waiting."""
    os.set_blocking(fd, False)
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_INTERVAL)
        if ready:
            chunk = _read(fd)
            if chunk:
                said.feed(chunk)
                continue
            if chunk is not None:  # end of file: the child is exiting
                _, status = os.waitpid(pid, 0)
                break
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            while True:
                chunk = _read(fd)
                if not chunk:
                    break
                said.feed(chunk)
            break
    said.finish()
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever it left behind in its group
    except (ProcessLookupError, PermissionError):
        pass
    return status


def _read(fd: int) -> Optional[bytes]:
    """Bytes, b"" at end of file, None when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def _write_stderr(data: bytes) -> None:
    while data:
        try:
            data = data[os.write(2, data):]
        except InterruptedError:
            continue
        except OSError:
            return


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # spawn() gave it its own process group
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _raise_stopped(signum: int, _frame) -> None:
    raise DownloadStopped(signum)


@contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM and SIGINT end the wait, also where nobody handles them yet (PID 1 ignores
    a signal without a handler). A handler somebody installed (the training job's stop
    guard) stays: its own exception ends the wait just as well."""
    defaults = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None)
    replaced = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous in defaults:
            replaced[signum] = previous
            signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def provide(uri: str, origin: str, code_dir: str, downloader: Downloader) -> None:
    """Download `uri` and unpack it into `code_dir` (created when absent; the caller
    checked that it is empty). Raises CodeDownloadError naming the URI and the fix."""
    what = f"the code {uri} ({origin})"
    try:
        with downloader.fetch(uri) as downloaded:
            archive.extract(downloaded, code_dir, name="the downloaded archive")
    except _NoBoto3 as error:
        raise CodeDownloadError(
            f"cannot download {what}: {error}. Either install boto3 in the image (for example "
            f"`RUN python -m pip install boto3`), or bake the code into {code_dir} (COPY it there): "
            f"smsuper downloads nothing when {code_dir} is not empty", error.exit_code) from None
    except CodeDownloadError as error:
        raise CodeDownloadError(f"cannot download {what}: {error}", error.exit_code) from None
    except archive.ArchiveError as error:
        raise CodeDownloadError(f"{what} cannot be used: {error}", CONFIG_ERROR) from None
    log.info(f"unpacked {uri} into {code_dir}, which was empty")


def is_empty_or_absent(directory: str) -> bool:
    try:
        return not os.listdir(directory)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def for_serving(submit_directory: str, base_dir: str, credentials: Optional[Credentials],
                environ: Mapping[str, str]) -> Optional[int]:
    """serve's step: an s3:// SAGEMAKER_SUBMIT_DIRECTORY goes into an empty /opt/ml/code
    before the handler module is looked up. Returns the exit code when serve must stop."""
    if not is_s3(submit_directory):
        return None
    code_dir = os.path.join(base_dir, "code")
    if not is_empty_or_absent(code_dir):
        log.info(f"SAGEMAKER_SUBMIT_DIRECTORY {submit_directory} is not downloaded: {code_dir} is not empty "
                 f"and is used as it is")
        return None
    try:
        provide(submit_directory, "SAGEMAKER_SUBMIT_DIRECTORY", code_dir, Downloader(credentials, environ))
    except CodeDownloadError as error:
        log.error(str(error))
        return error.exit_code
    except (DownloadStopped, StopRequested) as stop:  # StopRequested: the lifecycle's stop guard
        log.error(f"received {stop} while downloading {submit_directory}: the model server does not start")
        return 128 + stop.signum
    return None
