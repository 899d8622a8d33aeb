"""The same file means the same to kubectl and to mlvisor: a differential test on a real API server.

Each case is a file of TrainingJob documents holding something YAML makes tricky (exponents,
octal and hex, y/yes/on/n/no/off, nulls, dates, quoted and tagged scalars, integer, float and
boolean keys, .inf, big integers, anchors and merge keys, several documents, JSON). It is
applied with ``kubectl apply`` (the client users run, against the generated CRDs) and read back
from the API server; mlvisor reads the same text with :func:`mlvisor.api.documents.read_documents`
and judges it with :func:`mlvisor.api.documents.parse_resource`. Then:

- kubectl refuses it (its YAML reading, or the API server's 422) <=> mlvisor refuses it, and
  mlvisor's message names the field (as the API server's does when it is the one refusing);
- accepted, the API server holds exactly mlvisor's values: ``spec.estimator.params``
  (free-form, ``x-kubernetes-preserve-unknown-fields``) equal with their JSON types (1 is not
  1.0), every other field mlvisor read equal to the stored one, and the same documents.

hypothesis adds generated scalars (numbers in every spelling, words, odd characters) to the
table. The table, with what PyYAML (mlvisor's reader before issue 18) made of each value, is
written to build/kubectl-yaml/table.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.conftest import REPO
from mlvisor.api.documents import parse_resource, read_documents
from mlvisor.api.problems import ResourceError

pytestmark = [pytest.mark.cluster]

RUN = uuid.uuid4().hex[:5]
TABLE: list[tuple[str, str, str, str, str]] = []  # case, written, kubectl, mlvisor, PyYAML


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    """The file; {name} is the first document's name ({name}-2, ... the others')."""
    field: str | None = None
    """Refused cases: the field mlvisor's message must name (and the API server's, for a 422)."""
    kubectl_says: str | None = None
    """Refused cases: what kubectl's refusal says, so that it is refused for the reason meant."""
    generated: bool = False
    """Drawn by hypothesis: either verdict may come, as long as both give the same one."""


def job(params: str = "{}", spec: str = "", meta: str = "", name: str = "{name}") -> str:
    """A TrainingJob document; ``params`` and ``spec`` are YAML lines (``spec`` at 2 spaces)."""
    params_block = params if params.startswith(("{", "[")) else "\n" + textwrap.indent(textwrap.dedent(params), "      ")
    return (f"apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: {name}\n{meta}spec:\n"
            f"  dataset: {{builtin: iris}}\n  estimator:\n    class: sklearn.linear_model.LogisticRegression\n"
            f"    params: {params_block.rstrip()}\n{spec}")


CASES = [
    # ------------------------------------------------------------------ numbers
    Case("exponents", job("""\
        C: 1e-2
        alpha: 1e-4
        tol: 1e-6
        a: 1e3
        b: 1E3
        c: 1e+3
        d: 1.5e-7
        e: .5
        f: -.5
        g: 1.0
        h: 0.
        i: 1e21
        j: 1e20
        k: 1e-400
        l: 1_0.5
        m: 1e999
        n0: 2.5
        """)),
    Case("integers", job("""\
        dec: 12
        plus: +12
        neg_zero: -0
        octal: 017
        octal_o: 0o17
        not_octal: 08
        decimal_point: 09.5
        hex: 0x1F
        hex_upper: 0X1f
        binary: 0b101
        underscores: 1_000
        hex_underscore: 0x_1F
        int64_max: 9223372036854775807
        int64_min: -9223372036854775808
        above_int64: 9223372036854775808
        uint64_max: 18446744073709551615
        huge: 123456789012345678901234567890
        zeros: 00
        """)),
    Case("strings-that-look-like-numbers", job("""\
        version: 1.2.3
        ip: 10.0.0.1
        clock: 12:30:00
        phone: +1-555-0100
        e3: e3
        hex_bad: 0xg
        prefix_only: 0x
        underscore_first: _1
        exponent_only: 1e
        percent: 50%
        dot_underscore: ._5
        """)),
    Case("quoted-and-tagged", job("""\
        q_exp: "1e3"
        q_hex: '0x1F'
        q_yes: "yes"
        q_y: 'y'
        q_empty: ""
        q_null: "null"
        str_tag: !!str 1e3
        str_yes: !!str yes
        int_tag: !!int "12"
        float_tag: !!float 1
        float_hex: !!float "0x10"
        bool_tag: !!bool "yes"
        custom_tag: !custom 12
        bang: ! 12
        binary: !!binary aGVsbG8=
        block: |
          yes
        folded: >
          1e3
        """)),
    Case("int-tag-on-a-float", job("{a: !!int 1.5}"), field="spec.estimator.params.a",
         kubectl_says="cannot decode !!float `1.5` as a !!int"),
    Case("bad-base64", job("{a: !!binary 'not base64!'}"), field="spec.estimator.params.a",
         kubectl_says="!!binary value contains invalid base64 data"),
    Case("infinity", job("{alpha: .inf}"), field="spec.estimator.params.alpha",
         kubectl_says="unsupported value: +Inf"),
    Case("minus-infinity", job("{alpha: -.Inf}"), field="spec.estimator.params.alpha",
         kubectl_says="unsupported value: -Inf"),
    Case("nan", job("{alpha: .nan}"), field="spec.estimator.params.alpha", kubectl_says="unsupported value: NaN"),
    # ------------------------------------------------------------------ booleans and nulls
    Case("booleans", job("""\
        b01: y
        b02: Y
        b03: yes
        b04: Yes
        b05: YES
        b06: on
        b07: On
        b08: ON
        b09: n
        b10: N
        b11: no
        b12: off
        b13: OFF
        b14: true
        b15: False
        b16: yEs
        b17: oN
        b18: nO
        """)),
    Case("nulls", job("""\
        a: null
        b: ~
        c:
        d: Null
        e: NULL
        f: nULL
        g: [1, ~, null]
        h: {x: ~}
        i: "~"
        j: !!null ''
        """)),
    Case("dates-and-times", job("""\
        date: 2001-12-14
        iso: 2001-12-14T21:59:43.10-05:00
        spaced: 2001-12-14 21:59:43.10
        zoned: 2001-12-14 21:59:43.10 -5
        not_a_date: 2001-13-14
        tagged: !!timestamp 2001-12-14
        """)),
    Case("bad-timestamp-tag", job("{d: !!timestamp 2001-13-01}"), field="spec.estimator.params.d",
         kubectl_says="as a !!timestamp"),
    # ------------------------------------------------------------------ keys
    Case("class-weight-int-keys", job("{class_weight: {0: 1, 1: 2, 2: 1}}")),
    Case("number-and-boolean-keys", job("""\
        keys:
          1.5: a
          1e7: b
          0.1: c
          3.14159265358979: d
          0x10: e
          -1: f
          true: g
          .inf: h
          2001-12-14: i
          "quoted": j
          1e6: k
          100000.0: l
          0.00001: m
          -0.0: n
          017: o
        """)),
    Case("boolean-word-keys", job("{weights: {y: 1, n: 2, on: 3, off: 4, yes: 5}}")),
    Case("null-key", job("{keys: {~: 1}}"), field="spec.estimator.params.keys",
         kubectl_says="unsupported map key of type: %!s(<nil>)"),
    Case("key-above-int64", job("{keys: {18446744073709551615: 1}}"), field="spec.estimator.params.keys",
         kubectl_says="unsupported map key of type: uint64"),
    Case("sequence-key", job("{keys: {[1, 2]: 1}}"), field="spec.estimator.params.keys",
         kubectl_says="invalid map key"),
    Case("key-given-twice", job("""\
        C: 1
        C: 2
        """)),
    # ------------------------------------------------------------------ anchors and merge keys
    Case("anchors-and-merge-keys", job("""\
        base: &b {max_depth: 3, min_samples_leaf: 2}
        merged: {<<: *b, max_depth: 5}
        merge_after: {max_depth: 5, <<: *b}
        merge_list: {<<: [*b, {max_depth: 9, extra: 1}]}
        merge_list_reversed: {<<: [{max_depth: 9, extra: 1}, *b]}
        grid: &g [1, 2, 3]
        again: *g
        quoted_merge: {"<<": 1}
        """)),
    Case("merge-of-a-scalar", job("{a: {<<: 1}}"), field="spec.estimator.params.a",
         kubectl_says="map merge requires map or sequence of maps as the value"),
    Case("unknown-anchor", job("{a: *nowhere}"), field=None, kubectl_says="unknown anchor 'nowhere' referenced"),
    Case("anchor-containing-itself", job("{a: &a [1, *a]}"), kubectl_says="anchor 'a' value contains itself"),
    Case("excessive-aliasing", job(
        "\n".join(["l0: &l0 [" + ",".join("x" * 10) + "]"] + [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]"
                                                            for i in range(1, 4)])),
         kubectl_says="document contains excessive aliasing"),
    # ------------------------------------------------------------------ typed fields
    Case("typed-numbers", job(spec="  workers: 1e0\n  testSize: 1e-1\n  randomState: 0x10\n"
                                   "  activeDeadlineSeconds: 1e3\n  supervision: {backoff: {factor: 2e0}}\n"
                                   "  resources: {limits: {cpu: 1e3, memory: 1Gi}}\n")),
    Case("typed-one-point-zero", job(spec="  workers: 1.0\n")),
    Case("typed-fraction-for-an-integer", job(spec="  workers: 1.5\n"), field="spec.workers",
         kubectl_says="must be of type integer"),
    Case("typed-quoted-integer", job(spec="  workers: \"2\"\n"), field="spec.workers",
         kubectl_says="must be of type integer"),
    Case("typed-quoted-number", job(spec="  testSize: '0.5'\n"), field="spec.testSize",
         kubectl_says="must be of type number"),
    Case("typed-booleans", job(spec="  suspend: off\n") + "---\n" + job(spec="  suspend: yes\n", name="{name}-2")
         + "---\n" + job(spec="  suspend: n\n", name="{name}-3")),
    Case("typed-quoted-boolean", job(spec="  suspend: \"true\"\n"), field="spec.suspend",
         kubectl_says="must be of type boolean"),
    Case("typed-target-y", job(spec="  dataset: {csv: {path: data.csv, target: y}}\n").replace(
        "  dataset: {builtin: iris}\n", ""), field="spec.dataset.csv.target", kubectl_says="must be of type string"),
    Case("typed-target-quoted", job(spec="  dataset: {csv: {path: data.csv, target: 'y'}}\n").replace(
        "  dataset: {builtin: iris}\n", "")),
    Case("typed-scoring-on", job(spec="  search: {grid: {C: [1e-2, 1e-1]}, scoring: on}\n"),
         field="spec.search.scoring", kubectl_says="must be of type string"),
    Case("typed-enum-n", job(spec="  supervision: {strategy: n}\n"), field="spec.supervision.strategy",
         kubectl_says="must be of type string"),
    Case("typed-cpu-boolean", job(spec="  resources: {limits: {cpu: yes}}\n"), field="spec.resources.limits.cpu",
         kubectl_says="must be of type integer"),
    Case("typed-null-and-empty", job(spec="  testSize: ~\n  workers:\n  supervision: {maxRestarts: null}\n")),
    Case("typed-over-the-maximum", job(spec="  randomState: 1e10\n"), field="spec.randomState",
         kubectl_says="should be less than or equal to 4294967295"),
    Case("label-on", job(meta="  labels: {team: on}\n"), field="metadata.labels",
         kubectl_says="cannot unmarshal bool into Go struct field ObjectMeta.metadata.labels of type string"),
    Case("label-quoted", job(meta="  labels: {team: 'on', tier: \"1e3\"}\n")),
    # ------------------------------------------------------------------ files
    Case("three-documents", "# leading comment\n" + job("{C: 1e-2}") + "--- # second\n"
         + job("{C: 1e-1}", name="{name}-2") + "---\n---\n" + job("{C: 1e0}", name="{name}-3")),
    Case("crlf-line-ends", job("{C: 1e-2, flag: on}").replace("\n", "\r\n")),
    Case("document-end-marker", job("{C: 1e-2}") + "...\n" + job("{C: 1e-1}", name="{name}-2")),
    Case("separator-with-text", job("{C: 1e-2}") + "--- {a: 1}\n" + job("{C: 1e-1}", name="{name}-2"),
         kubectl_says="invalid Yaml document separator: {a: 1}"),
    Case("json", json.dumps({"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "{name}"},
                             "spec": {"dataset": {"builtin": "iris"}, "estimator": {
                                 "class": "sklearn.linear_model.LogisticRegression",
                                 "params": {"one": 1.0, "exp": 1e3, "big": 12345678901234567890, "s": "yes",
                                            "none": None, "list": [None, 1.5]}}}})),
    Case("json-with-nan", '{"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "{name}"},'
         ' "spec": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.linear_model.LogisticRegression",'
         ' "params": {"a": NaN}}}}\n'),
    Case("json-then-yaml", json.dumps({"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "{name}"}, "spec": {"dataset": {"builtin": "iris"},
                                       "estimator": {"class": "sklearn.linear_model.LogisticRegression"}}})
         + "\n---\n" + job("{C: 1e-2, v: yes}", name="{name}-2")),
    Case("json-number-overflow", '{"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": '
         '{"name": "{name}"}, "spec": {"dataset": {"builtin": "iris"}, "estimator": {"class": '
         '"sklearn.linear_model.LogisticRegression", "params": {"a": 1e400}}}}\n',
         kubectl_says="cannot unmarshal number 1e400"),
    Case("syntax-error", job("""\
        a: [1, 2
        b: 3
        """), kubectl_says="error converting YAML to JSON"),
]

# Where kubectl's reading cannot be matched: it keeps one of two keys that become the same JSON
# key, chosen by Go's map order. mlvisor refuses such a file, naming both keys.
AT_RANDOM = Case("keys-colliding", job("{keys: {1: a, '1': b}}"), field="spec.estimator.params.keys")


# ----------------------------------------------------------------------------- the harness
@dataclass
class Kubectl:
    kubeconfig: str
    namespace: str

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl")
        assert kubectl, "kubectl is not on PATH: this test compares with the client users run"
        proc = subprocess.run([kubectl, "-n", self.namespace, *args], input=input, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, KUBECONFIG=self.kubeconfig))
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc


@pytest.fixture(scope="module")
def kubectl(request: pytest.FixtureRequest) -> Iterator[Kubectl]:
    """An API server with the CRDs: the suite's node-less plane, or the e2e cluster (make e2e)."""
    kubeconfig = os.environ.get("MLVISOR_E2E_KUBECONFIG")
    if not kubeconfig:
        plane, _ = request.getfixturevalue("bare")  # CRDs applied, no operator, no node
        kubeconfig = str(plane.kubeconfig)
    k = Kubectl(kubeconfig, f"kubectl-yaml-{RUN}")
    k("create", "namespace", k.namespace)
    k("apply", "-f", str(REPO / "manifests" / "crds"))
    yield k
    k("delete", "namespace", k.namespace, "--wait=false", check=False)
    out = REPO / "build" / "kubectl-yaml"
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| case | written | kubectl + API server | mlvisor | PyYAML (before) |", "|---|---|---|---|---|"]
    rows += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in TABLE]
    version = k("version", "--client", "-o", "json", check=False).stdout
    client = json.loads(version).get("clientVersion", {}).get("gitVersion", "?") if version.strip() else "?"
    (out / "table.md").write_text(f"kubectl {client}\n\n" + "\n".join(rows) + "\n")


def same(a: Any, b: Any) -> bool:
    """Equal with JSON types: 1 and 1.0 differ, as do "1" and 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def within(mine: Any, stored: Any) -> bool:
    """Every value mlvisor read is stored as read (the API server adds defaults beside them)."""
    if isinstance(mine, dict):
        return isinstance(stored, dict) and all(k in stored and within(v, stored[k]) for k, v in mine.items())
    if isinstance(mine, list):
        return isinstance(stored, list) and len(mine) == len(stored) and all(map(within, mine, stored))
    return same(mine, stored)


def mlvisor_verdict(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(the documents mlvisor reads, every problem it finds), as `mlvisor validate` judges the schema."""
    try:
        reading = read_documents(text, "case.yaml")
    except ResourceError as e:
        return [], e.problems
    problems: list[str] = []
    for doc in reading.documents:
        try:
            parse_resource(doc.value, "case.yaml", doc.booleans)
        except ResourceError as e:
            problems.extend(e.problems)
    return [d.value for d in reading.documents], problems


def stored(kubectl: Kubectl, prefix: str) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl("get", "trainingjobs", "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: i for i in items if i["metadata"]["name"].startswith(prefix)}


def pyyaml(text: str) -> Any:
    """What PyYAML's safe loader (mlvisor's reader before issue 18) made of the file, for the table."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (yaml.YAMLError, ValueError) as e:
        return f"error: {str(e).splitlines()[0]}"


def show(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=True, default=str, sort_keys=True)
    except (TypeError, ValueError):  # PyYAML's dates as keys, its self-containing anchors
        return repr(value)


def apply(kubectl: Kubectl, case: Case, tmp_path: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
    name = f"y{RUN}-{case.id}"[:50]
    text = case.text.replace("{name}", name)
    path = tmp_path / f"{case.id}.{'json' if text.lstrip().startswith('{') else 'yaml'}"
    path.write_bytes(text.encode())
    return text, kubectl("apply", "-f", str(path), check=False)


def _params(doc: Any, name: str) -> dict[str, Any] | str:
    """spec.estimator.params of the document called ``name`` among ``doc`` (one or a list), or an error."""
    if isinstance(doc, str):
        return doc
    for d in doc if isinstance(doc, list) else [doc]:
        if isinstance(d, dict) and (d.get("metadata") or {}).get("name") == name:
            params = ((d.get("spec") or {}).get("estimator") or {}).get("params")
            return params if isinstance(params, dict) else {}
    return {}


def _written(text: str, key: str) -> str:
    """The line a key of params was written on, as written."""
    for line in text.splitlines():
        if line.strip().startswith(f"{key}:"):
            return line.strip()
    return key


def record(case: Case, text: str, verdict: str, docs: list[dict[str, Any]], on_server: dict[str, dict[str, Any]],
           problems: list[str]) -> None:
    """Rows of the table: one per value of params when accepted, one per file when refused."""
    before = pyyaml(text)
    if verdict != "accepted":
        said = "refused: " + "; ".join(p.removeprefix("case.yaml: ") for p in problems) if problems else "accepted"
        TABLE.append((case.id, textwrap.shorten(" ".join(text.split()), 60), verdict, said[:200],
                      textwrap.shorten(show(before), 60)))
        return
    for doc in docs:
        name = doc["metadata"]["name"]
        mine, theirs, old = doc["spec"]["estimator"].get("params") or {}, _params(on_server[name], name), _params(before, name)
        assert isinstance(theirs, dict)
        for key in dict.fromkeys([*mine, *theirs, *(old if isinstance(old, dict) else [])]):
            TABLE.append((case.id, _written(text, str(key)), show(theirs.get(key, "(absent)")),
                          show(mine.get(key, "(absent)")),
                          show(old.get(key, "(absent)")) if isinstance(old, dict) else textwrap.shorten(old, 60)))
        others = {k: v for k, v in doc["spec"].items() if k not in ("dataset", "estimator")}
        if others:
            stored_spec = on_server[name]["spec"]
            TABLE.append((case.id, show(others), show({k: stored_spec.get(k) for k in others}), show(others), ""))


def check(kubectl: Kubectl, case: Case, tmp_path: Path) -> None:
    text, proc = apply(kubectl, case, tmp_path)
    name = f"y{RUN}-{case.id}"[:50]
    docs, problems = mlvisor_verdict(text)
    try:
        if proc.returncode != 0:
            record(case, text, f"refused: {proc.stderr.strip()}"[:200], docs, {}, problems)
            assert problems, f"kubectl refused {case.id} ({proc.stderr.strip()}) but mlvisor accepts it: {docs}"
            if case.generated:
                return
            assert case.kubectl_says and case.kubectl_says in proc.stderr, (
                f"{case.id}: kubectl refused it for another reason than the case means: {proc.stderr}")
            if case.field:
                assert any(case.field in p for p in problems), f"{case.id}: mlvisor does not name {case.field}: {problems}"
                if "is invalid" in proc.stderr:  # the API server's 422 names the field too
                    assert case.field.split(".")[-1] in proc.stderr, proc.stderr
            return
        on_server = stored(kubectl, name)
        record(case, text, "accepted", docs, on_server, problems)
        assert not problems, f"kubectl accepted {case.id} but mlvisor refuses it: {problems}"
        assert case.kubectl_says is None, f"{case.id} was meant to be refused by kubectl ({case.kubectl_says})"
        assert sorted(on_server) == sorted(d["metadata"]["name"] for d in docs), (
            f"{case.id}: the API server holds {sorted(on_server)}, mlvisor read {[d['metadata']['name'] for d in docs]}")
        for doc in docs:
            obj = on_server[doc["metadata"]["name"]]
            mine = doc["spec"]["estimator"].get("params")
            theirs = obj["spec"]["estimator"].get("params")
            assert same(mine or {}, theirs or {}), f"{case.id}: params differ:\n  kubectl: {theirs}\n  mlvisor: {mine}"
            assert within(doc["spec"], obj["spec"]), f"{case.id}: spec differs:\n  kubectl: {obj['spec']}\n  mlvisor: {doc['spec']}"
            assert within(doc["metadata"].get("labels") or {}, obj["metadata"].get("labels") or {})
    finally:
        kubectl("delete", "trainingjobs", "--all", "--wait=false", check=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kubectl_and_mlvisor_read_a_file_alike(kubectl: Kubectl, case: Case, tmp_path: Path) -> None:
    check(kubectl, case, tmp_path)


def test_keys_that_collide_are_kept_at_random_by_kubectl_and_refused_by_mlvisor(kubectl: Kubectl, tmp_path: Path) -> None:
    text, proc = apply(kubectl, AT_RANDOM, tmp_path)
    name = f"y{RUN}-{AT_RANDOM.id}"
    _docs, problems = mlvisor_verdict(text)
    try:
        assert proc.returncode == 0, proc.stderr
        keys = stored(kubectl, name)[name]["spec"]["estimator"]["params"]["keys"]
        assert keys in ({"1": "a"}, {"1": "b"}), keys
        record(AT_RANDOM, text, f"accepted: {show(keys)} (either, at random)", [], {}, problems)
        assert problems and all("both become the JSON key \"1\"" in p and AT_RANDOM.field in p for p in problems), problems
    finally:
        kubectl("delete", "trainingjobs", "--all", "--wait=false", check=False)


# ----------------------------------------------------------------------------- generated scalars
_WORDS = ["y", "Y", "n", "N", "yes", "No", "on", "OFF", "true", "False", "~", "null", "Null", "NULL", ".5", "-.5",
          "+.5", "0", "-0", "00", "0o7", "0b1", "0x", "1_", "_1", "1__2", "1e", "e1", ".e1", "1.", "-", "+", "+-1"]
SCALARS = st.one_of(
    st.from_regex(r"[-+]?[0-9_]{1,6}(\.[0-9_]{0,4})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 2**66).map(hex),
    st.integers(0, 2**10).map(lambda i: "0" + oct(i)[2:]),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: str(f) if abs(f) < 1e300 else f"{f:e}"),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.6g}"),
    st.sampled_from(_WORDS),
    st.text(alphabet="0123456789abcdefxoyYnN._+-eE~", min_size=1, max_size=8),
).filter(lambda s: not s.startswith(("-", "?", ":")) or (len(s) > 1 and s[1] in "0123456789."))
_NOT_JSON = {".nan", ".inf", "+.inf", "-.inf"}  # kubectl refuses these (the cases above), and a whole file with them


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(values=st.lists(SCALARS.filter(lambda s: s.lower() not in _NOT_JSON), min_size=40, max_size=40))
def test_generated_scalars_read_alike(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory,
                                      values: list[str]) -> None:
    params = "\n".join(f"k{i:02d}: {v}" for i, v in enumerate(values)) + "\n"
    check(kubectl, Case(f"gen-{uuid.uuid4().hex[:6]}", job(params), generated=True), tmp_path_factory.mktemp("gen"))
    # The same scalars as keys. Two of them may become one JSON key (1 and 1.0), which kubectl
    # resolves at random (see the test above): such a draw is not a case here.
    keys = "keys:\n" + "".join(f"  {v}: {i}\n" for i, v in enumerate(dict.fromkeys(values)))
    case = Case(f"genkeys-{uuid.uuid4().hex[:6]}", job(keys), generated=True)
    _, problems = mlvisor_verdict(case.text.replace("{name}", "x"))
    if not any("kubectl keeps one of them at random" in p for p in problems):
        check(kubectl, case, tmp_path_factory.mktemp("genkeys"))
