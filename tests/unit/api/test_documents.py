"""Resource files read as ``kubectl apply -f`` reads them (mlvisor.api.documents, mlvisor.api.kubeyaml).

The expected values are what kubectl 1.33 and the API server made of the same text
(tests/cluster/test_kubectl_yaml.py checks them against a real API server); the properties
at the end check the rules on drawn values.
"""

from __future__ import annotations

import json
import math
import struct
import textwrap
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvisor.api import kubeyaml
from mlvisor.api.documents import (
    MAX_DEPTH,
    MAX_EXPANDED_NODES,
    parse_documents,
    parse_resource,
    read_documents,
)
from mlvisor.api.problems import ResourceError


def read(text: str) -> Any:
    """The one document of ``text``."""
    (doc,) = parse_documents(text, "f.yaml")
    return doc


def value(scalar: str) -> Any:
    """What kubectl sends for ``a: <scalar>`` (a missing key: the null it dropped)."""
    return read(f"a: {scalar}\n").get("a", "(dropped)")


def refused(text: str) -> list[str]:
    with pytest.raises(ResourceError) as e:
        parse_documents(text, "f.yaml")
    return e.value.problems


def same(a: Any, b: Any) -> bool:
    """Equal with JSON types: 1 and 1.0 differ, as do 1 and True."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


# ----------------------------------------------------------------------------- scalars
SCALARS = [
    # exponents need no dot; integral floats below 1e21 come back from the API server as integers
    ("1e-2", 0.01), ("1e-4", 0.0001), ("1e-6", 1e-06), ("1e3", 1000), ("1E3", 1000), ("1e+3", 1000),
    ("1.5e-7", 1.5e-07), (".5", 0.5), ("-.5", -0.5), ("1.0", 1), ("0.", 0), ("-0.0", 0), ("2.5", 2.5),
    ("1e20", 100000000000000000000), ("1e21", 1e21), ("1e-400", 0), ("1_0.5", 10.5), ("1e999", "1e999"),
    # integers: Go's ParseInt with base 0, underscores dropped; beyond int64 through a float64
    ("12", 12), ("+12", 12), ("-0", 0), ("017", 15), ("0o17", 15), ("08", 8), ("09.5", 9.5), ("0x1F", 31),
    ("0X1f", 31), ("0b101", 5), ("0b-101", -5), ("1_000", 1000), ("0x_1F", 31), ("1__2", 12), ("00", 0),
    ("9223372036854775807", 9223372036854775807), ("-9223372036854775808", -9223372036854775808),
    ("9223372036854775808", 9223372036854776000), ("18446744073709551615", 18446744073709552000),
    ("123456789012345678901234567890", 1.2345678901234568e29), ("9" * 400, "9" * 400),
    # words
    ("y", True), ("Y", True), ("yes", True), ("Yes", True), ("YES", True), ("on", True), ("On", True), ("ON", True),
    ("true", True), ("True", True), ("n", False), ("N", False), ("no", False), ("No", False), ("off", False),
    ("OFF", False), ("false", False), ("FALSE", False), ("yEs", "yEs"), ("oN", "oN"), ("tRue", "tRue"),
    ("null", "(dropped)"), ("~", "(dropped)"), ("", "(dropped)"), ("Null", "(dropped)"), ("NULL", "(dropped)"),
    ("nULL", "nULL"),
    # look like numbers, are text
    ("1.2.3", "1.2.3"), ("12:30:00", "12:30:00"), ("0x", "0x"), ("0xg", "0xg"), ("_1", "_1"), ("1e", "1e"),
    ("._5", "._5"), (".5_5", 0.55), ("e3", "e3"), ("+.inf_x", "+.inf_x"),
    ("2001-12-14", "2001-12-14"), ("2001-12-14T21:59:43.10-05:00", "2001-12-14T21:59:43.10-05:00"),
    ("2001-13-14", "2001-13-14"),
    # quoted and tagged
    ('"1e3"', "1e3"), ("'yes'", "yes"), ('""', ""), ('"null"', "null"), ("!!str 1e3", "1e3"), ("!!str yes", "yes"),
    ('!!int "12"', 12), ("!!float 1", 1), ('!!float "0x10"', 16), ('!!bool "yes"', True), ("!!null ''", "(dropped)"),
    ("!custom 12", "12"), ("! 12", "12"), ("!!binary aGVsbG8=", "hello"), ("!!binary /w==", "\ufffd"),
    ("!!timestamp 2001-12-14", "2001-12-14"), ("!!timestamp 2000-2-29", "2000-2-29"),
    ("|\n  yes\n", "yes\n"), (">\n  1e3\n", "1e3\n"),
]


@pytest.mark.parametrize(("written", "expected"), SCALARS, ids=[w[:20] for w, _ in SCALARS])
def test_a_scalar_means_what_it_means_to_kubectl(written: str, expected: Any) -> None:
    assert same(value(written), expected), value(written)


@pytest.mark.parametrize(
    ("written", "words"),
    [
        (".inf", "an infinity cannot be written in JSON, so kubectl refuses it (json: unsupported value: +Inf)"),
        ("-.Inf", "json: unsupported value: -Inf"),
        (".nan", "NaN cannot be written in JSON"),
        ("!!int 1.5", "cannot decode !!float `1.5` as a !!int"),
        ("!!float abc", "cannot decode !!str `abc` as a !!float"),
        ("!!float 18446744073709551615", "cannot decode !!int `18446744073709551615` as a !!float"),
        ("!!timestamp 2001-13-01", "cannot decode !!str `2001-13-01` as a !!timestamp"),
        ("!!timestamp 2001-2-29", "cannot decode !!str `2001-2-29` as a !!timestamp"),
        ("!!timestamp 12", "cannot decode !!int `12` as a !!timestamp"),
        ("!!null abc", "cannot decode !!str `abc` as a !!null"),
        ("!!binary 'not base64!'", "!!binary value contains invalid base64 data"),
    ],
)
def test_what_kubectl_refuses_is_refused_naming_the_field_and_line(written: str, words: str) -> None:
    (problem,) = refused(f"spec:\n  params:\n    a: {written}\n")
    assert problem.startswith("f.yaml: line 3: spec.params.a: "), problem
    assert words in problem


# ----------------------------------------------------------------------------- keys
def test_keys_become_the_strings_kubectl_writes() -> None:
    doc = read(textwrap.dedent("""\
        class_weight: {0: 1, 1: 2, 2: 1}
        keys: {1.5: a, 1e7: b, 0.1: c, 3.14159265358979: d, 0x10: e, -1: f, true: g, .inf: h, 2001-12-14: i,
               "quoted": j, 1e6: k, 100000.0: l, 0.00001: m, -0.0: n, 017: o, 16777217.0: p, -.inf: q}
        """))
    assert doc["class_weight"] == {"0": 1, "1": 2, "2": 1}
    # floats are written as float32s, shortest first, with Go's %g exponents
    assert doc["keys"] == {"1.5": "a", "1e+07": "b", "0.1": "c", "3.1415927": "d", "16": "e", "-1": "f", "true": "g",
                           ".inf": "h", "2001-12-14": "i", "quoted": "j", "1e+06": "k", "100000": "l", "1e-05": "m",
                           "-0": False, "15": "o", "1.6777216e+07": "p", "-.inf": "q"}  # (the value n: false)


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ("{~: 1}", "a key cannot be null (~, null or nothing)"),
        ("{18446744073709551615: 1}", "the key 18446744073709551615 is above the largest int64"),
        ("{[1, 2]: 1}", "a key cannot be a mapping or a sequence (kubectl: invalid map key)"),
        ("{1: a, '1': b}", "the keys 1 (line 1) and \"1\" (line 1) both become the JSON key \"1\", and kubectl "
                           "keeps one of them at random"),
        ("{1: a, 1.0: b}", "both become the JSON key \"1\""),
        ("{.nan: 1, .NaN: 2}", "both become the JSON key \".nan\""),
    ],
)
def test_keys_kubectl_refuses_or_resolves_at_random_are_refused(keys: str, words: str) -> None:
    (problem,) = refused(f"keys: {keys}\n")
    assert problem.startswith("f.yaml: line 1: keys: ") and words in problem, problem


def test_a_boolean_word_as_a_key_is_kept_as_kubectl_keeps_it_with_a_note() -> None:
    reading = read_documents("weights: {y: 1, n: 2, on: 3}\n", "f.yaml")
    assert reading.documents[0].value == {"weights": {"true": 3, "false": 2}}
    assert reading.notes == [
        'f.yaml: line 1: the key y of weights is the boolean true to kubectl, so the key is "true"; '
        "quote it ('y') if you meant the text",
        'f.yaml: line 1: the key n of weights is the boolean false to kubectl, so the key is "false"; '
        "quote it ('n') if you meant the text",
        "f.yaml: line 1: weights.true is given twice in the same mapping (first on line 1); kubectl keeps only the last",
        'f.yaml: line 1: the key on of weights is the boolean true to kubectl, so the key is "true"; '
        "quote it ('on') if you meant the text",
    ]


def test_a_key_given_twice_keeps_the_last_with_a_note_naming_both_lines() -> None:
    reading = read_documents("spec:\n  C: 1\n  C: 2\n", "f.yaml")
    assert reading.documents[0].value == {"spec": {"C": 2}}
    assert reading.notes == ["f.yaml: line 3: spec.C is given twice in the same mapping (first on line 2); "
                             "kubectl keeps only the last"]


# ----------------------------------------------------------------------------- nulls, merges, anchors
def test_client_side_apply_drops_nulls_from_mappings_but_not_from_sequences() -> None:
    assert read("a: null\nb: ~\nc:\nd: [1, ~, null]\ne: {x: ~}\nf: '~'\n") == {"d": [1, None, None], "e": {}, "f": "~"}


def test_merge_keys_as_go_yaml_v2_merges_them() -> None:
    doc = read(textwrap.dedent("""\
        base: &b {max_depth: 3, min_samples_leaf: 2}
        merged: {<<: *b, max_depth: 5}
        merge_after: {max_depth: 5, <<: *b}
        merge_list: {<<: [*b, {max_depth: 9, extra: 1}]}
        merge_list_reversed: {<<: [{max_depth: 9, extra: 1}, *b]}
        nested: {<<: {<<: *b, c: 1}}
        quoted: {"<<": 1}
        """))
    assert doc["merged"] == {"max_depth": 5, "min_samples_leaf": 2}
    assert doc["merge_after"] == {"max_depth": 3, "min_samples_leaf": 2}  # the merge overrides the key before it
    assert doc["merge_list"] == {"max_depth": 3, "min_samples_leaf": 2, "extra": 1}  # earlier maps win
    assert doc["merge_list_reversed"] == {"max_depth": 9, "min_samples_leaf": 2, "extra": 1}
    assert doc["nested"] == {"max_depth": 3, "min_samples_leaf": 2, "c": 1}
    assert doc["quoted"] == {"<<": 1}


def test_a_merge_that_overrides_a_key_written_before_it_gets_a_note() -> None:
    reading = read_documents("b: &b {x: 1}\nm:\n  x: 0\n  <<: *b\n", "f.yaml")
    assert reading.documents[0].value["m"] == {"x": 1}
    assert reading.notes == ["f.yaml: line 4: the merge (<<) replaces m.x given before it on line 3: kubectl lets a "
                             "merge override the keys written before it (YAML says they win); put << first"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: {<<: 1}\n", "line 1: a: map merge requires map or sequence of maps as the value"),
        ("a: {<<: [1]}\n", "map merge requires map or sequence of maps"),
        ("a: 1\nb: *nowhere\n", "line 2: not valid YAML: the alias *nowhere refers to no anchor &nowhere before it"),
        ("a: &a [1, *a]\n", "line 1: an anchor's value contains an alias of itself"),
        ("a: &a {b: *a}\n", "an anchor's value contains an alias of itself"),
    ],
)
def test_anchor_and_merge_mistakes_are_refused(text: str, words: str) -> None:
    (problem,) = refused(text)
    assert words in problem, problem


def test_a_document_mostly_made_of_aliases_is_refused_as_kubectl_refuses_it() -> None:
    # go-yaml v2 refuses a document whose decoding is more than 99% alias expansion (past 1000 nodes)
    levels = ["l0: &l0 [" + ",".join("x" * 10) + "]"]
    levels += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 4)]
    (problem,) = refused("\n".join(levels) + "\n")
    assert "(document contains excessive aliasing)" in problem
    assert read("\n".join(levels[:3]) + "\n")["l2"][0][0] == ["x"] * 10  # 1,000 nodes: fine


def test_aliases_cannot_nest_past_the_depth_bound() -> None:
    deep = "a: &a " + "[" * 40 + "]" * 40 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n"
    (problem,) = refused(deep)
    assert problem == f"f.yaml: line 2: nested more than {MAX_DEPTH} levels deep once its aliases are expanded"


def test_a_bomb_is_refused_by_its_expanded_size() -> None:
    (problem,) = refused("l0: &l0 [x, x]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]\n" for i in range(1, 60)))
    assert f"expands to more than {MAX_EXPANDED_NODES} nodes through its anchors and aliases" in problem


# ----------------------------------------------------------------------------- files
def test_documents_are_split_where_kubectl_splits_them() -> None:
    text = "# a comment\na: 1\n--- # the second\nb: 2\n---\n---\n# only a comment\n---\nc: 3\n...\nd: 4\n"
    reading = read_documents(text, "f.yaml")
    # the text after `...` is not read: go-yaml reads one document of each part between --- lines
    assert [(d.line, d.value) for d in reading.documents] == [(1, {"a": 1}), (4, {"b": 2}), (9, {"c": 3})]


def test_text_after_a_separator_is_refused_as_kubectl_refuses_it() -> None:
    assert refused("a: 1\n--- {b: 2}\n") == [
        "f.yaml: line 2: '---' must stand alone on its line (a comment may follow): kubectl refuses the document "
        "separator '--- {b: 2}'"]


def test_crlf_line_ends_read_as_lf() -> None:
    assert parse_documents("a: 1e-2\r\n---\r\nb: on\r\n", "f.yaml") == [{"a": 0.01}, {"b": True}]


def test_a_file_starting_with_a_brace_is_json_first() -> None:
    assert parse_documents('{"a": 1.0, "b": 1e3, "c": 12345678901234567890, "d": null, "a2": [null], "a": 2}',
                           "f.json") == [{"a": 2, "b": 1000, "c": 12345678901234567000, "a2": [None]}]
    # two JSON values in a row are a JSON stream; YAML may follow the first one
    assert parse_documents('{"a": 1}\n{"b": 2}\n', "f.json") == [{"a": 1}, {"b": 2}]
    assert parse_documents('{"a": 1}\n---\nb: yes\n', "f.json") == [{"a": 1}, {"b": True}]
    # NaN is not JSON to Go: the file is then read as YAML, where NaN is a word
    assert parse_documents('{"a": NaN}', "f.json") == [{"a": "NaN"}]
    # a flow mapping that is not JSON is YAML
    assert parse_documents("{a: y}", "f.yaml") == [{"a": True}]
    (problem,) = refused('{"a": 1e400}')
    assert "the number 1e400 does not fit a float64" in problem
    (problem,) = refused('{"a": 1}\n{"b": 2}\n{bad\n')
    assert problem.startswith("f.yaml: line 3: not valid JSON: ")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: b\n  c: d\n", "f.yaml: line 2, column 4: not valid YAML: mapping values are not allowed in this context"),
        ("a: [1, 2\nb: 3\n", "f.yaml: line 2, column 2: not valid YAML: did not find expected ',' or ']' "
                            "(while parsing a flow sequence on line 1)"),
        ("a: 1\n---\nb: [\n", "f.yaml: line 4, column 1: not valid YAML: did not find expected node content"),
        ('a: "x\x00"\n', "f.yaml: line 1: not valid YAML: unacceptable character #x0000: control characters are "
                         "not allowed"),
    ],
)
def test_a_yaml_error_names_the_file_and_line(text: str, words: str) -> None:
    (problem,) = refused(text)
    assert problem.startswith(words), problem
    assert "<unicode string>" not in problem


# ----------------------------------------------------------------------------- judged with the API server's types
def _job(spec: str) -> str:
    return ("apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: j}\nspec:\n"
            "  estimator: {class: sklearn.linear_model.LogisticRegression, params: {C: 1e-2}}\n" + spec)


def judge(text: str) -> list[str]:
    (doc,) = read_documents(text, "f.yaml").documents
    try:
        parse_resource(doc.value, "f.yaml", doc.booleans)
    except ResourceError as e:
        return e.problems
    return []


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("  dataset: {csv: {path: d.csv, target: yes}}\n",
         'spec.dataset.csv.target: Input should be a valid string (got yes, which kubectl reads as the boolean true: '
         'write "yes" in quotes if you meant the text)'),
        ("  dataset: {csv: {path: d.csv, target: y}}\n", '(got y, which kubectl reads as the boolean true: write "y"'),
        ("  dataset: {builtin: iris}\n  search: {grid: {C: [1e-2]}, scoring: on}\n",
         'spec.search.scoring: Input should be a valid string (got on, which kubectl reads as the boolean true'),
        ("  dataset: {builtin: iris}\n  supervision: {strategy: off}\n",
         "spec.supervision.strategy: Input should be 'OneForOne', 'OneForAll' or 'RestForOne' (got off, which kubectl "
         "reads as the boolean false"),
        ("  dataset: {csv: {path: d.csv, target: true}}\n",
         "(got the boolean true: kubectl reads an unquoted true, yes, y or on as true; quote the value if you meant the text)"),
        ("  dataset: {builtin: iris}\n  workers: \"2\"\n",
         "spec.workers: Input should be a valid integer (got the text '2': in quotes it is a string to kubectl and the "
         "API server; write 2 without quotes)"),
        ("  dataset: {builtin: iris}\n  testSize: '1e-1'\n", "spec.testSize: Input should be a valid number (got the text"),
        ("  dataset: {builtin: iris}\n  suspend: 'yes'\n", "spec.suspend: Input should be a valid boolean (got the text"),
        ("  dataset: {builtin: iris}\n  workers: yes\n", "spec.workers: Input should be a valid integer (got True)"),
        ("  dataset: {builtin: iris}\n  workers: 1.5\n", "spec.workers: Input should be a valid integer (got 1.5)"),
    ],
)
def test_types_are_the_api_servers_and_a_surprising_boolean_is_told_to_quote(spec: str, words: str) -> None:
    problems = judge(_job(spec))
    assert any(words in p for p in problems), problems


def test_what_kubectl_reads_as_numbers_is_accepted() -> None:
    assert judge(_job("  dataset: {builtin: iris}\n  workers: 1.0\n  testSize: 1e-1\n  randomState: 0x10\n"
                      "  suspend: off\n  testSize: ~\n")) == []


# ----------------------------------------------------------------------------- properties
# Text without control characters, line or paragraph separators (YAML folds those) or a BOM.
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp"], exclude_characters="\ufeff"),
               max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def go_number(f: float) -> int | float:
    """A float64 as Go's encoding/json writes it and the API server reads it back: integral and
    below 1e21, its shortest digits zero-padded, an integer; otherwise the float."""
    return int(Decimal(repr(f))) if f.is_integer() and abs(f) < 1e21 else f


def as_the_api_server_stores(v: Any) -> Any:
    """A JSON value after kubectl and the API server: nulls dropped from maps, Go's numbers."""
    if isinstance(v, dict):
        return {k: as_the_api_server_stores(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [as_the_api_server_stores(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int) and -(2**63) <= v < 2**63:
        return v
    return go_number(float(v))


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES.map(lambda v: {"v": v}))
def test_json_text_means_the_same_through_the_yaml_rules(doc: dict[str, Any]) -> None:
    """JSON is YAML: a document written as JSON (after a comment, so kubectl reads it as YAML) is
    read as its JSON value, as the API server stores it."""
    text = "# read as YAML\n" + json.dumps(doc, ensure_ascii=False)
    assert parse_documents(text, "f.yaml") == [as_the_api_server_stores(doc)]
    assert same(parse_documents(text, "f.yaml")[0], as_the_api_server_stores(doc))


@given(st.integers(-(2**63), 2**63 - 1))
def test_an_int64_in_any_base_is_that_integer(i: int) -> None:
    assert same(value(str(i)), i)
    if i >= 0:
        assert same(value(hex(i)), i) and same(value("0o" + oct(i)[2:]), i) and same(value(bin(i)), i)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_is_the_number_the_api_server_stores(f: float) -> None:
    assert same(value(repr(f)), go_number(f))
    assert same(value(f"{f:e}"), go_number(float(f"{f:e}")))


@given(st.floats(allow_nan=False))
def test_a_float_key_is_the_shortest_text_of_its_float32(f: float) -> None:
    key = kubeyaml.key_string(f)
    try:
        f32 = struct.unpack("f", struct.pack("f", f))[0]
    except OverflowError:
        f32 = math.copysign(math.inf, f)
    if math.isinf(f32):
        assert key == (".inf" if f32 > 0 else "-.inf")
        return
    assert struct.unpack("f", struct.pack("f", float(key)))[0] == f32  # reads back as the same float32
    digits = len(key.lstrip("-").split("e")[0].replace(".", "").strip("0")) or 1
    if digits > 1:  # and no shorter decimal does
        shorter = f"{f32:.{digits - 2}e}"
        assert struct.unpack("f", struct.pack("f", float(shorter)))[0] != f32


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("ab01:-[]{}&*!|>'\"%@`#,?~ \n\t.eyn<"), max_size=40))
def test_any_text_is_read_or_refused_with_a_resource_error(text: str) -> None:
    try:
        read_documents(text, "f.yaml")
    except ResourceError as e:
        assert e.problems and all(p.startswith("f.yaml: ") for p in e.problems)
