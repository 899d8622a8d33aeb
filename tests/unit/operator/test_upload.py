"""mlvisor upload's receiving end (the process the upload pod runs through the exec channel) and
its target parsing: a claim holds the whole file or the one before, never a part."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from mlvisor.operator.receive import receive
from mlvisor.operator.upload import UploadError, parse_target


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_whole_file_arrives_and_replaces_the_one_before(tmp_path: Path) -> None:
    dest = tmp_path / "datasets" / "train.csv"
    data = b"a,b\n" + b"1,2\n" * 300_000  # more than one chunk
    assert receive(dest, len(data), sha(data), io.BytesIO(data + b"trailing bytes are not read")) == {
        "bytes": len(data), "sha256": sha(data)}
    assert dest.read_bytes() == data
    receive(dest, 4, sha(b"x,y\n"), io.BytesIO(b"x,y\n"))
    assert dest.read_bytes() == b"x,y\n" and [p.name for p in dest.parent.iterdir()] == ["train.csv"]


@pytest.mark.parametrize(("sent", "words"), [
    (b"a,b\n1,", "the upload ended after 6 of 8 bytes"),
    (b"a,b\n1,3\n", "of what arrived is not the file's"),
])
def test_a_short_or_changed_upload_leaves_the_file_before_and_nothing_else(tmp_path: Path, sent: bytes,
                                                                          words: str) -> None:
    dest = tmp_path / "train.csv"
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match=words):
        receive(dest, 8, sha(b"a,b\n1,2\n"), io.BytesIO(sent))
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def test_the_receiving_process_says_what_it_wrote_or_why_not(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "mlvisor.operator.receive", str(tmp_path / "t.csv"), "3"]
    ok = subprocess.run([*cmd, sha(b"abc")], input=b"abc", capture_output=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == f'{{"bytes": 3, "sha256": "{sha(b"abc")}"}}'.encode()
    bad = subprocess.run([*cmd, sha(b"abd")], input=b"abc", capture_output=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.decode().startswith(f"cannot write {tmp_path / 't.csv'}: sha256 ")


def test_targets_name_a_claim_and_a_path_inside_it() -> None:
    assert parse_target("pvc://datasets/census/train.csv") == ("datasets", "census/train.csv")
    for bad in ("s3://b/k.csv", "pvc://datasets", "pvc://datasets/../etc/passwd", "pvc://Not_A_Claim/x.csv"):
        with pytest.raises(UploadError, match="pvc://"):
            parse_target(bad)
