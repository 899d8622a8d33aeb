"""``python -m mlvisor.operator.receive PATH SIZE SHA256``: the receiving end of ``mlvisor upload``.

Reads exactly SIZE bytes from stdin (so the end of the file is known without waiting for the
channel to close), writes them to a temporary file beside PATH, checks the SHA-256, fsyncs and
renames it into place: a file on the claim is either the whole upload or the previous one.
Prints ``{"bytes": N, "sha256": "..."}`` and exits 0; on any problem, exits 1 naming it.
Standard library only: it runs in the upload pod.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def receive(path: Path, size: int, sha256: str, stream: IO[bytes]) -> dict[str, object]:
    read = stream.read
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.upload-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    left = size
    try:
        with open(part, "wb") as f:
            while left > 0:
                chunk = read(min(CHUNK, left))
                if not chunk:
                    raise ValueError(f"the upload ended after {size - left} of {size} bytes")
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != sha256:
            raise ValueError(f"sha256 {digest.hexdigest()} of what arrived is not the file's {sha256}")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return {"bytes": size, "sha256": sha256}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m mlvisor.operator.receive PATH SIZE SHA256", file=sys.stderr)
        return 2
    try:
        done = receive(Path(args[0]), int(args[1]), args[2], sys.stdin.buffer)
    except (OSError, ValueError) as e:
        print(f"cannot write {args[0]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
