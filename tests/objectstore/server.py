"""One versitygw process serving a folder over S3, for a test session.

versitygw's posix backend keeps every bucket as a folder under its root and every object as a
file, so a test can also look at (or corrupt) what a client wrote. It runs with one root
account (``--access``/``--secret``), listens on the given addresses (loopback for local tests;
also the host's address on the cluster node's link, so that pods reach it), and is stopped
with SIGTERM, then SIGKILL. Its output goes to ``<root>/../versitygw.log``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from objectstore.build import ensure_binary

REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    root: Path
    """The posix backend's folder: one sub-folder per bucket."""
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 0
    access_key: str = field(default_factory=lambda: "mlv" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None

    def endpoint(self, host: str | None = None) -> str:
        return f"http://{host or self.hosts[0]}:{self.port}"

    def env(self, host: str | None = None) -> dict[str, str]:
        """The AWS_* variables of a client of this server (what a credentials Secret holds)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint(host), "AWS_REGION": REGION}

    def bucket(self, name: str) -> Path:
        """Create a bucket (a folder of the backend) and return its folder."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, timeout: float = 30.0) -> S3Server:
        binary = ensure_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.hosts[0])
        log = open(self.root.parent / f"versitygw-{self.port}.log", "ab")
        argv = [str(binary), "--access", self.access_key, "--secret", self.secret_key, "--region", REGION]
        for host in self.hosts:
            argv += ["--port", f"{host}:{self.port}"]
        argv += ["posix", str(self.root)]
        try:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"versitygw exited with {self.process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(self.endpoint() + "/", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # it answers (an anonymous request is refused): it is up
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"versitygw did not answer on {self.endpoint()} within {timeout:g} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
