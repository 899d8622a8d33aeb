"""Ask `mlvisor run`'s running search workers how far they are: ``GET /progress`` on 127.0.0.1.

The local twin of ``kube/progress.py``: each search worker process got its own free port (a
machine has one network namespace; a pod has its own, so there the manifest's port is used),
and the runtime asks it for its report (``mlvisor.api.progress``) at most every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from mlvisor.api.progress import PROGRESS_PATH, ProgressReport

TIMEOUT_SECONDS = 2.0


async def _get(port: int) -> ProgressReport | None:
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT_SECONDS)
        writer.write(f"GET {PROGRESS_PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(64 * 1024), TIMEOUT_SECONDS)
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            return None
        return ProgressReport.from_message(body)
    except (OSError, TimeoutError, ValueError):
        return None  # not listening yet, or just exited: its final report will say the rest
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def fetch_progress(ports: Mapping[str, int]) -> dict[str, ProgressReport]:
    """worker process (pod) name -> its report, for those that answered."""
    names = list(ports)
    answers = await asyncio.gather(*(_get(ports[n]) for n in names))
    return {n: r for n, r in zip(names, answers, strict=True) if r is not None}
