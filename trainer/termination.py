"""The container's termination message: how a process tells its supervisor why it ended.

Kubernetes copies the file at the container's ``terminationMessagePath`` (by default
``/dev/termination-log``, at most 4096 bytes) into ``containerStatuses[].state.terminated.message``,
where the operator reads it without access to logs or volumes; the local runtime plays the same
file (``MLVISOR_TERMINATION_MESSAGE_PATH`` points at it). Used by the trainer (why a worker
failed, or the artifact summary on success) and by the model server (why a model cannot be
loaded). The file is written only when it exists: the kubelet creates it, and a process run
by hand outside a pod never creates files in /dev.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TERMINATION_LOG = "/dev/termination-log"
#: Overrides the path (the local runtime sets it; a pod uses the default).
TERMINATION_MESSAGE_ENV = "MLVISOR_TERMINATION_MESSAGE_PATH"
#: The kubelet keeps at most 4096 bytes; leave room for multi-byte characters.
MAX_MESSAGE_CHARS = 4000


def termination_message_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(TERMINATION_MESSAGE_ENV) or TERMINATION_LOG)


def write_termination_message(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Write ``message`` (cut to the kubelet's limit) when the file exists; True if written."""
    path = termination_message_path(env)
    if not path.is_file():
        return False
    try:
        path.write_text(message[:MAX_MESSAGE_CHARS])
    except OSError:
        return False
    return True
