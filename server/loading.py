"""Loading the model at start-up, and letting the process crash when loading cannot succeed.

Two kinds of failure, told apart by what the artifact can still become:

- **Transient**: the version directory or its metadata.json is not there yet (a volume still
  mounting, a slow network file system). The server stays live and not ready, says so in
  ``/v2/health/ready``, and tries again every :data:`RETRY_SECONDS`; the pod's startupProbe
  (``spec.startupTimeoutSeconds``) decides how long that may take.
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

from mlvisor.server.runtime import ModelRuntime
from mlvisor.trainer.artifact import ArtifactError, ArtifactMissing, read_metadata
from mlvisor.trainer.termination import write_termination_message

log = logging.getLogger("mlvisor.server")

#: Exit code of a server whose model can never be loaded. The ModelServer supervisor treats
#: it like the trainer's exit code 2: not worth a restart (mlvisor.operator.api keeps the same value).
EXIT_MODEL_UNLOADABLE = 4
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
) -> tuple[ModelRuntime, float]:
    """Load ``model_dir`` (in a thread), retrying while it is missing; ModelUnloadable when it never will.

    ``waiting(reason)`` is called on every retry, for the readiness answer; ``named(name)``
    once the model's name is known from metadata.json (when ``model_name`` is None).
    """
    reported = None
    while True:
        try:
            name = model_name
            if name is None:
                name = (await asyncio.to_thread(read_metadata, model_dir)).name
                named(name)
            return await asyncio.to_thread(ModelRuntime.load, model_dir, name)
        except ArtifactMissing as e:
            reason = f"waiting for the model: {e}; retrying every {retry_seconds:g}s"
            if reason != reported:
                log.warning("%s", reason)
                reported = reason
            waiting(reason)
        except ArtifactError as e:
            raise ModelUnloadable(str(e)) from e
        except Exception as e:  # a bug or an estimator that cannot run here: just as final
            raise ModelUnloadable(f"{type(e).__name__}: {e}") from e
        await asyncio.sleep(retry_seconds)


def crash_message(model_dir: Path, reason: str) -> str:
    """What the supervisor shows: the termination message of a server that cannot load its model."""
    return f"model {model_dir} cannot be loaded: {reason}"


def report_unloadable(model_dir: Path, reason: str) -> str:
    """Write the termination message and log it; returns the message."""
    message = crash_message(model_dir, reason)
    write_termination_message(message)
    log.critical("%s; exiting with code %d so the supervisor sees it", message, EXIT_MODEL_UNLOADABLE)
    return message
