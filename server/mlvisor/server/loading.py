"""Loading the model at start-up, and letting the process crash when loading cannot succeed.

Two kinds of failure, told apart by what the artifact can still become:

- **Transient**: the version directory or its metadata.json is not there yet (a volume still
  mounting, a slow network file system). The server stays live and not ready, says so in
  ``/v2/health/ready``, and tries again every :data:`RETRY_SECONDS`; the pod's startupProbe
  (``spec.startupTimeoutSeconds``) decides how long that may take. When the kubelet gives up and
  stops it, the server writes what it was waiting for as its termination message
  (``not ready: waiting for the model: ...``, see :func:`report_not_ready`), so the supervisor
  can say why instead of quoting the last lines of a clean shutdown.
- **Final**: the artifact is there but cannot be served: checksum mismatch, a type outside
  the allowlist, not a skops file, a metadata/model shape mismatch, an exception in the
  warm-up prediction. Versions appear complete by one atomic rename, so waiting cannot help.
  The server then *lets it crash* (OTP's word): it writes the reason to the container's
  termination message and exits with :data:`EXIT_MODEL_UNLOADABLE`, so the supervisor sees
  the reason at once (in ``status.supervision.lastFailure`` and the Warning Event) and,
  under the default supervision, rolls back to the last good version or fails, instead of
  waiting out a startup timeout again and again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mlvisor.api.exits import EXIT_MODEL_UNLOADABLE, TerminationKind, TerminationMessage, write_termination_message
from mlvisor.server.runtime import ModelRuntime
from mlvisor.trainer.artifact import ArtifactError, ArtifactMissing, read_metadata
from mlvisor.trainer.storage import StorageUnreachable, fetch_artifact

log = logging.getLogger("mlvisor.server")

#: How often a model that is not there yet is looked for again.
RETRY_SECONDS = 1.0


class ModelUnloadable(Exception):
    """The artifact is there and will never load; str() says why."""


async def load_model(
    model_dir: Path,
    model_name: str | None,
    waiting: Callable[[str], None] = lambda _reason: None,
    named: Callable[[str], None] = lambda _name: None,
    retry_seconds: float = RETRY_SECONDS,
    uri: str | None = None,
) -> tuple[ModelRuntime, float]:
    """Load ``model_dir`` (in a thread), retrying while it is missing; ModelUnloadable when it never will.

    With ``uri`` (an s3:// or https:// version), the version is first downloaded into
    ``model_dir``, verified and renamed into place (:func:`mlvisor.trainer.storage.fetch_artifact`):
    while its metadata.json is not there, or the store does not answer, the server waits as for
    a volume still mounting; a version that is there but wrong (size, SHA-256) or that cannot be
    read (access denied) is final. ``waiting(reason)`` is called on every retry with what it
    waits for (``waiting for the model: <why>``), for the readiness answer and the termination
    message; ``named(name)`` once the model's name is known from metadata.json (when
    ``model_name`` is None).
    """
    reported = None
    while True:
        try:
            if uri is not None:
                await asyncio.to_thread(fetch_artifact, uri, model_dir)
            name = model_name
            if name is None:
                name = (await asyncio.to_thread(read_metadata, model_dir)).name
                named(name)
            return await asyncio.to_thread(ModelRuntime.load, model_dir, name)
        except (ArtifactMissing, StorageUnreachable) as e:
            reason = f"waiting for the model: {e}"
            if reason != reported:
                log.warning("%s; retrying every %gs", reason, retry_seconds)
                reported = reason
            waiting(reason)
        except ArtifactError as e:
            raise ModelUnloadable(str(e)) from e
        except Exception as e:  # a bug or an estimator that cannot run here: just as final
            raise ModelUnloadable(f"{type(e).__name__}: {e}") from e
        await asyncio.sleep(retry_seconds)


def crash_message(model_dir: Path | str, reason: str) -> str:
    """What the supervisor shows: the termination message of a server that cannot load its model
    (``cannot load the model: <why>``, naming the model directory or URI unless the reason does)."""
    where = "" if str(model_dir) in reason else f" (model {'URI' if '://' in str(model_dir) else 'directory'} {model_dir})"
    return TerminationMessage(TerminationKind.MODEL_UNLOADABLE, f"{reason}{where}").to_message()


def report_unloadable(model_dir: Path | str, reason: str) -> str:
    """Write the termination message and log it; returns the message."""
    message = crash_message(model_dir, reason)
    write_termination_message(message)
    log.critical("%s; exiting with code %d so the supervisor sees it", message, EXIT_MODEL_UNLOADABLE)
    return message


def report_not_ready(doing: str) -> str:
    """Told to stop before the model was ready (a startupProbe gave up): write what it was doing
    (``waiting for the model: ...``, ``loading the model from ...``) as the termination message,
    so the supervisor says why it never got ready. Returns the message."""
    message = TerminationMessage(TerminationKind.NOT_READY, doing).to_message()
    write_termination_message(message)
    log.warning("stopped before the model was ready: %s", doing)
    return message
