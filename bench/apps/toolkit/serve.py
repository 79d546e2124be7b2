"""The official toolkit's stack: sagemaker-inference's own start_model_server(), as a
framework container's serving entry point calls it, with its default handler service
(sagemaker_inference.default_handler_service) on multi-model-server, 2 workers.

One change, so that runs beside each other and other work on the machine do not collide:
the toolkit writes multi-model-server's config.properties to /etc/sagemaker-mms.properties;
here it goes to TOOLKIT_MMS_CONFIG instead. Everything else is the toolkit's: the properties
it generates (workers, port, timeout, vmargs) from SAGEMAKER_* variables, the model store
"/", the model "model" = SAGEMAKER_BASE_DIR/model with its code/inference.py, log4j2.xml.

The benchmark runs this as PID 1 of its own PID namespace, as a container would: the
toolkit finds multi-model-server's Java process by scanning every process, and refuses to go
on when it sees two. TEMP (multi-model-server's java.io.tmpdir, where the frontend and the
Python workers meet on unix sockets) and TMPDIR (its pid file) are private to the stack.
"""
import os

from sagemaker_inference import model_server

model_server.MMS_CONFIG_FILE = os.environ["TOOLKIT_MMS_CONFIG"]

if __name__ == "__main__":
    model_server.start_model_server()
