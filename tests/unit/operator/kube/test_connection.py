"""The operator's login (kube/connection.py): the service account and kubeconfigs, read as client-go reads them.

The two logins also run for real: the cluster tier's operator pod logs in with its service
account, every tier's operator process with a kubeconfig (client certificates on the control
plane, a token on the emulator).
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlvisor.operator.kube.connection import Connection, LoginError, TokenFile, connect, from_kubeconfig, in_cluster


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_in_cluster_reads_the_service_account_and_picks_up_a_rotated_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text("CA")
    conn = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, account=tmp_path)
    assert conn.host == "https://[fd00::1]:6443"
    assert conn.ca_file == str(tmp_path / "ca.crt") and not conn.insecure
    assert conn.authorization() == "Bearer first"
    assert isinstance(conn.authorization, TokenFile)

    now = [0.0]
    token = TokenFile(tmp_path / "token", every=60, clock=lambda: now[0])
    assert token() == "Bearer first"
    (tmp_path / "token").write_text("second")  # the kubelet rotated the projected token
    now[0] = 59.0
    assert token() == "Bearer first"
    now[0] = 60.0
    assert token() == "Bearer second"
    (tmp_path / "token").unlink()  # a failed re-read keeps the last token rather than logging out
    now[0] = 200.0
    assert token() == "Bearer second"


def test_in_cluster_without_a_token_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match="no service account token mounted"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, account=tmp_path)


def test_a_kubeconfig_list_merges_first_wins_and_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "config"
    first.write_text(textwrap.dedent("""\
        current-context: dev
        contexts: [{name: dev, context: {cluster: c, user: u}}]
        clusters:
        - name: c
          cluster: {server: "https://api:6443", certificate-authority: ca.crt, tls-server-name: kube.local,
                    proxy-url: "http://proxy:3128"}
        """))
    second = tmp_path / "b" / "config"
    second.write_text(textwrap.dedent("""\
        current-context: other
        clusters: [{name: c, cluster: {server: "https://ignored"}}]
        users: [{name: u, user: {client-certificate: me.crt, client-key: me.key}}]
        """))
    conn = from_kubeconfig([str(first), str(second)])
    assert conn.host == "https://api:6443"
    assert conn.ca_file == str(tmp_path / "a" / "ca.crt")
    assert (conn.cert_file, conn.key_file) == (str(tmp_path / "b" / "me.crt"), str(tmp_path / "b" / "me.key"))
    assert conn.tls_server_name == "kube.local" and conn.proxy == "http://proxy:3128"
    assert conn.authorization() is None and not conn.via_kubernetes


def test_inline_data_becomes_pem_and_a_private_file_and_tokens_are_bearer(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(textwrap.dedent(f"""\
        current-context: x
        contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
        clusters: [{{name: c, cluster: {{server: "https://api", certificate-authority-data: {_b64("CA PEM")},
                     insecure-skip-tls-verify: true}}}}]
        users: [{{name: u, user: {{client-certificate-data: {_b64("CERT")}, client-key-data: {_b64("KEY")},
                  token: t0k}}}}]
        """))
    conn = from_kubeconfig([str(config)])
    assert conn.ca_data == "CA PEM" and conn.insecure
    assert conn.cert_file == conn.key_file and conn.cert_file is not None
    assert Path(conn.cert_file).read_text() == "CERT\nKEY"
    assert stat.S_IMODE(os.stat(conn.cert_file).st_mode) == 0o600
    assert conn.authorization() == "Bearer t0k"

    (tmp_path / "token").write_text("from-file\n")
    config.write_text(config.read_text().replace("token: t0k", "tokenFile: token"))
    assert from_kubeconfig([str(config)]).authorization() == "Bearer from-file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("contexts: []\n", "current-context is not set"),
        ("current-context: x\ncontexts: []\n", "current-context 'x' is not among its contexts"),
        ("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n",
         "names cluster 'c', which is not among its clusters"),
        ("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
         "clusters: [{name: c, cluster: {}}]\nusers: [{name: u, user: {}}]\n", "cluster 'c' has no server"),
        ("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
         "clusters: [{name: c, cluster: {server: 'https://a', certificate-authority-data: '%%%'}}]\n"
         "users: [{name: u, user: {}}]\n", "certificate-authority-data is not base64"),
        ("[1, 2]\n", "expected a mapping"),
    ],
)
def test_a_kubeconfig_that_cannot_log_in_says_which_field(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "config"
    config.write_text(text)
    with pytest.raises(LoginError, match=expected):
        from_kubeconfig([str(config)])


def test_an_exec_plugin_is_run_by_the_kubernetes_package(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.write_text("#!/bin/sh\necho '{\"apiVersion\": \"client.authentication.k8s.io/v1beta1\", "
                      "\"kind\": \"ExecCredential\", \"status\": {\"token\": \"from-exec\"}}'\n")
    plugin.chmod(0o755)
    config = tmp_path / "config"
    config.write_text(textwrap.dedent(f"""\
        current-context: x
        contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
        clusters: [{{name: c, cluster: {{server: "https://api:6443", insecure-skip-tls-verify: true}}}}]
        users: [{{name: u, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: {plugin}}}}}}}]
        """))
    conn = connect(str(config))
    assert conn.via_kubernetes and conn.host == "https://api:6443" and conn.insecure
    assert conn.authorization() == "Bearer from-exec"


def test_the_operator_imports_and_logs_in_without_the_kubernetes_package(tmp_path: Path) -> None:
    """What ``mlvisor operator`` does when no plugin is needed: ``kubernetes`` is unimportable, and nothing misses it."""
    config = tmp_path / "config"
    config.write_text("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                      "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\n")
    code = textwrap.dedent(f"""\
        import sys
        sys.modules["kubernetes"] = None
        from mlvisor.operator.kube import connection, handlers, controllers, client
        conn = connection.connect({str(config)!r})
        assert not conn.via_kubernetes
        print(handlers.login(memo={{"connection": conn}}).token)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"


def test_a_connection_made_by_hand_has_no_token() -> None:
    assert Connection(host="http://x").authorization() is None
