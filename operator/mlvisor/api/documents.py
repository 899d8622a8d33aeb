"""Resource files: documents read the way ``kubectl apply -f`` reads them, within bounds, and
parsed into typed resources.

A file means here exactly what it means to kubectl and the API server (:func:`read_documents`):
the same split into documents, the same YAML 1.1 reading of every scalar and key
(:mod:`mlvisor.api.kubeyaml`: ``yes`` and ``y`` are booleans, ``1e-2`` is 0.01, ``{0: 1}`` has
the key "0"), the same numbers as the API server stores them, the same documents refused. So
`mlvisor validate`, `mlvisor run` and the trainer judge what the cluster would run.

A resource file is untrusted input with a bounded cost: at most :data:`MAX_FILE_BYTES`;
nesting at most :data:`MAX_DEPTH` deep (checked on the parser's event stream, before any
recursive step, and again with aliases expanded); anchors and aliases allowed, but the document
as expanded by its aliases must stay under :data:`MAX_EXPANDED_NODES` nodes, so a "billion
laughs" file is refused in milliseconds instead of being expanded. A key given twice in one
mapping is what kubectl accepts (it keeps the last): a note says so.

:func:`parse_resource` judges one document and lists every problem it has at once (kind,
apiVersion, every field, every cross-field rule), in :mod:`mlvisor.api.problems`' words, with
the API server's types: a quoted "3" is not an integer, nor is ``yes`` a string.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from mlvisor.api import kubeyaml
from mlvisor.api.problems import ResourceError, describe_validation_error, field_path
from mlvisor.api.resources import API_VERSION, GROUP, KINDS, ModelPipeline, ModelServer, TrainingJob

Resource = TrainingJob | ModelServer | ModelPipeline

#: Largest resource file read (a TrainingJob spec is at most 128 KiB serialised).
MAX_FILE_BYTES = 1024 * 1024
#: Deepest nesting of mappings and sequences (a spec needs fewer than 10 levels).
MAX_DEPTH = 64
#: Most nodes a document may have once its aliases are expanded (what validation walks).
MAX_EXPANDED_NODES = 200_000

_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def foreign_kind(doc: Any) -> str | None:
    """A note for a document of a kind mlvisor does not own (a Namespace, an HPA, ...), else None.

    Such documents are skipped, not refused: a kustomize tree or a file that also holds a
    HorizontalPodAutoscaler is a normal thing to validate or run.
    """
    if not isinstance(doc, dict):
        return None
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or kind in KINDS:
        return None
    if isinstance(api_version, str) and api_version.split("/")[0] == GROUP:
        return None  # claims to be ours: a misspelt kind is an error, not a skip
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return f"{kind}{' ' + str(name) if name else ''} ({api_version}) is not an mlvisor kind: skipped"


def parse_resource(doc: Any, where: str = "", booleans: Mapping[tuple[str | int, ...], str] | None = None) -> Resource:
    """Validate one parsed document; raises ResourceError naming every problem at once.

    Types are the API server's (pydantic's strict JSON mode): an integer field takes a JSON
    integer, not "3" or true. ``booleans`` (from :class:`Document`) names the word a boolean was
    written as, so that ``target: yes`` is told to quote it.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(doc, dict):
        raise ResourceError([f"{prefix}expected a mapping with apiVersion, kind, metadata, spec"])
    problems: list[str] = []
    kind = doc.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1) if isinstance(kind, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{prefix}kind: expected one of {', '.join(KINDS)}, got {kind!r}{hint}")
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"{prefix}apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}")
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ResourceError(problems)
    try:
        resource = model.model_validate_json(json.dumps({**doc, "apiVersion": API_VERSION}), strict=True)
    except ValidationError as e:
        problems.extend(describe_validation_error(e, f"{prefix}{kind} {name}: ", booleans))
        raise ResourceError(problems) from None
    if problems:
        raise ResourceError(problems)
    return resource


# ----------------------------------------------------------------------------- reading YAML as kubectl does
@dataclass(frozen=True)
class Document:
    """One document of a file, as kubectl would send it to the API server."""

    value: Any
    """The JSON value: dicts with string keys, lists, str, int, float, bool, None."""
    line: int
    """The line of the file the document starts on."""
    booleans: Mapping[tuple[str | int, ...], str] = field(default_factory=dict)
    """Where a surprising word (y, yes, on, n, no, off, ...) became a boolean: field path -> the word."""


@dataclass(frozen=True)
class Reading:
    documents: list[Document]
    notes: list[str]
    """What kubectl does silently that the writer may not expect (a key given twice, ...)."""


class _Bounded(Exception):
    """A document kubectl refuses, or one over a bound; str() says why and where."""


def read_documents(text: str, where: str) -> Reading:
    """The documents of ``text`` read the way ``kubectl apply -f`` reads them, within the bounds.

    kubectl (1.33) splits the file at lines starting with ``---``, reads each part with
    sigs.k8s.io/yaml (go-yaml v2 into ``interface{}``, keys made strings: see
    :mod:`mlvisor.api.kubeyaml`), drops null map values as client-side apply does, and the
    API server stores numbers as int64 or float64; a file starting with ``{`` is JSON first.
    Raises ResourceError listing every document kubectl would refuse, each with its line.
    """
    problems: list[str] = []
    documents: list[Document] = []
    notes: list[str] = []
    for line0, part, is_json in _parts(text, where, problems):
        try:
            doc = _read_json(part, line0, where) if is_json else _read_yaml(part, line0, where, notes)
        except _Bounded as e:
            problems.append(str(e))
            continue
        if doc is not None and doc.value is not None:  # an empty document, or `null`, is skipped
            documents.append(doc)
    if problems:
        raise ResourceError(problems)
    return Reading(documents, notes)


def parse_documents(text: str, where: str) -> list[Any]:
    """The JSON values of the documents of ``text`` (see :func:`read_documents`); ResourceError otherwise."""
    return [d.value for d in read_documents(text, where).documents]


# The whitespace Go's unicode.IsSpace knows, which kubectl skips to see whether a file is JSON.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_JSON_SPACE = " \t\n\r"


def _parts(text: str, where: str, problems: list[str]) -> Iterator[tuple[int, str, bool]]:
    """(first line, text, is JSON) of each part kubectl decodes on its own.

    A file whose first non-space character (in its first 4096 bytes) is ``{`` is read as a
    stream of JSON values; if the first one (or the second) is not JSON, the rest is YAML. YAML
    is split at each line that starts with ``---`` and has nothing but a comment after it
    (kubectl refuses any other text there); each part is one document.
    """
    start = 0
    if text.encode()[:4096].decode(errors="ignore").lstrip(_GO_SPACE).startswith("{"):
        count, consumed = 0, 0
        while True:
            pos = _skip(text, consumed, _JSON_SPACE)
            if pos == len(text):
                return
            try:
                _, end = _JSON_PROBE.raw_decode(text, pos)
            except (ValueError, RecursionError) as e:
                if count > 1:
                    line = text.count("\n", 0, getattr(e, "pos", pos)) + 1
                    problems.append(f"{where}: line {line}: not valid JSON: {getattr(e, 'msg', e)}")
                    return
                break
            yield text.count("\n", 0, pos) + 1, text[pos:end], True
            count, consumed = count + 1, end
        # As kubectl's decoder does: after the last JSON value, skip spaces up to the end of its line.
        pos = consumed
        while pos < len(text) and text[pos] in _GO_SPACE:
            pos += 1
            if text[pos - 1] == "\n":
                break
        start = pos
    line = text.count("\n", 0, start) + 1
    lines = text[start:].split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    part: list[str] = []
    part_line = line
    for i, raw in enumerate(lines):
        row = raw[:-1] if raw.endswith("\r") else raw
        if row.startswith("---"):
            rest = row[3:].strip(_GO_SPACE)
            if rest and not rest.startswith("#"):
                problems.append(
                    f"{where}: line {line + i}: '---' must stand alone on its line (a comment may "
                    f"follow): kubectl refuses the document separator '{row}'"
                )
                part, part_line = [], line + i + 1
                continue
            if part:
                yield part_line, "".join(part), False
            part, part_line = [], line + i + 1
            continue
        part.append(row + "\n")
    if part:
        yield part_line, "".join(part), False


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


# ------------------------------------------------------------------ YAML: compose, bound, decode
class _Scalar:
    __slots__ = ("implicit", "line", "tag", "value")

    def __init__(self, tag: str | None, value: str, implicit: bool, line: int):
        self.tag, self.value, self.implicit, self.line = tag, value, implicit, line


class _Collection:
    __slots__ = ("is_map", "items", "line")

    def __init__(self, is_map: bool, line: int):
        self.is_map, self.line = is_map, line
        self.items: list[_Node] = []  # a mapping's: key, value, key, value, ...


class _Alias:
    __slots__ = ("line", "name", "target")

    def __init__(self, name: str, target: _Node, line: int):
        self.name, self.target, self.line = name, target, line


_Node = _Scalar | _Collection | _Alias


def _read_yaml(text: str, line0: int, where: str, notes: list[str]) -> Document | None:
    root = _compose(text, line0, where)
    if root is None:
        return None
    _measure(root, where)
    decoder = _Decoder(where)
    value = _to_json(decoder.decode(root), where, line=line0)
    notes.extend(decoder.notes)
    return Document(value, line0, decoder.booleans)


def _compose(text: str, line0: int, where: str) -> _Node | None:
    """The node graph of the part's first document (go-yaml reads only that one), or None.

    Built from libyaml's events (go-yaml v2 is a port of libyaml), nesting checked as it goes;
    an anchor is known from where it is set to the end of the document.
    """
    anchors: dict[str, _Node] = {}
    stack: list[_Collection] = []
    root: _Node | None = None
    loader = _YamlLoader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            line = line0 + (event.start_mark.line if event.start_mark else 0)
            if isinstance(event, yaml.DocumentEndEvent | yaml.StreamEndEvent):
                break  # go-yaml reads the first document of the part only
            if isinstance(event, yaml.CollectionEndEvent):
                node: _Node = stack.pop()
            elif isinstance(event, yaml.AliasEvent):
                name = event.anchor or ""
                target = anchors.get(name)
                if target is None:
                    raise _Bounded(
                        f"{where}: line {line}: not valid YAML: the alias *{name} refers to "
                        f"no anchor &{name} before it in this document"
                    )
                node = _Alias(name, target, line)
            elif isinstance(event, yaml.ScalarEvent):
                node = _Scalar(event.tag, event.value, event.implicit[0], line)
                if event.anchor is not None:
                    anchors[event.anchor] = node
            elif isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _Bounded(f"{where}: line {line}: nested more than {MAX_DEPTH} levels deep")
                collection = _Collection(isinstance(event, yaml.MappingStartEvent), line)
                if event.anchor is not None:  # known inside itself already, as go-yaml has it
                    anchors[event.anchor] = collection
                stack.append(collection)
                continue
            else:
                continue  # stream and document start
            if stack:
                stack[-1].items.append(node)
            else:
                root = node
    except yaml.MarkedYAMLError as e:
        raise _Bounded(_syntax_error(e, line0, where)) from None
    except yaml.reader.ReaderError as e:
        line = line0 + text.count("\n", 0, e.position)
        what = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise _Bounded(f"{where}: line {line}: not valid YAML: unacceptable character {what}: {e.reason}") from None
    except yaml.YAMLError as e:
        raise _Bounded(f"{where}: line {line0}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    return root


def _syntax_error(e: yaml.MarkedYAMLError, line0: int, where: str) -> str:
    mark = e.problem_mark or e.context_mark
    at = f"line {line0 + mark.line}, column {mark.column + 1}" if mark else f"line {line0}"
    if "maximum nesting depth" in str(e.problem):  # libyaml's own limit can trip before our count does
        return f"{where}: line {line0 + mark.line if mark else line0}: nested more than {MAX_DEPTH} levels deep"
    context = ""
    if e.context:
        context = f" ({e.context}" + (f" on line {line0 + e.context_mark.line}" if e.context_mark else "") + ")"
    return f"{where}: {at}: not valid YAML: {e.problem}{context}"


def _children(node: _Node) -> list[_Node]:
    if isinstance(node, _Collection):
        return node.items
    if isinstance(node, _Alias):
        return [node.target]
    return []


def _measure(root: _Node, where: str) -> None:
    """The document as its aliases expand it: at most MAX_EXPANDED_NODES nodes, MAX_DEPTH deep, finite.

    Each distinct node is measured once (an alias is one more reference to a node already
    there), so this takes time linear in the file, however large the expansion.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[_Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_.discard(id(node))
            kids = _children(node)
            own = 0 if isinstance(node, _Alias) else 1
            size[id(node)] = own + sum(size[id(k)] for k in kids)
            depth[id(node)] = (1 if isinstance(node, _Collection) else 0) + max((depth[id(k)] for k in kids), default=0)
            if size[id(node)] > MAX_EXPANDED_NODES:
                raise _Bounded(
                    f"{where}: expands to more than {MAX_EXPANDED_NODES} nodes through its anchors and aliases "
                    f"(line {node.line}); refusing to expand it (a YAML bomb?)"
                )
            if depth[id(node)] > MAX_DEPTH:
                raise _Bounded(
                    f"{where}: line {node.line}: nested more than {MAX_DEPTH} levels deep once its aliases are expanded"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            assert isinstance(node, _Collection)
            raise _Bounded(
                f"{where}: line {node.line}: an anchor's value contains an alias of itself, which "
                "would never end (kubectl: anchor value contains itself)"
            )
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in reversed(_children(node)))


def _allowed_alias_ratio(decoded: int) -> float:
    """go-yaml v2's limit on the share of a document that comes from aliases."""
    low, high = 400_000, 4_000_000
    if decoded <= low:
        return 0.99
    if decoded >= high:
        return 0.10
    return 0.99 - 0.89 * (decoded - low) / (high - low)


class _GoMap:
    """A map as go-yaml v2 builds it: Go keys (type and value) to (key, value, line, as written)."""

    __slots__ = ("entries", "line")

    def __init__(self, line: int):
        self.entries: dict[tuple[str, Any], tuple[Any, Any, int, str]] = {}
        self.line = line


class _GoList(list):  # type: ignore[type-arg]
    """A sequence, with the line of each item (for messages about a value kubectl refuses)."""

    lines: list[int]


class _Decoder:
    """go-yaml v2's decoding into interface{}, in its order (which its alias budget depends on)."""

    def __init__(self, where: str):
        self.where = where
        self.decoded = 1  # the document node
        self.aliased = 0
        self.alias_depth = 0
        self.notes: list[str] = []
        self.booleans: dict[tuple[str | int, ...], str] = {}

    def fail(self, line: int, path: tuple[str | int, ...], message: str) -> NoReturn:
        at = f"{field_path(path)}: " if path else ""
        raise _Bounded(f"{self.where}: line {line}: {at}{message}")

    def decode(self, node: _Node, path: tuple[str | int, ...] = (), into: _GoMap | None = None) -> Any:
        self.decoded += 1
        if self.alias_depth:
            self.aliased += 1
        if (
            self.aliased > 100
            and self.decoded > 1000
            and self.aliased / self.decoded > _allowed_alias_ratio(self.decoded)
        ):
            self.fail(
                node.line,
                (),
                "too much of this document is repeated through aliases: kubectl refuses it "
                "(document contains excessive aliasing)",
            )
        if isinstance(node, _Alias):
            self.alias_depth += 1
            try:
                return self.decode(node.target, path, into)
            finally:
                self.alias_depth -= 1
        if isinstance(node, _Scalar):
            try:
                value = kubeyaml.scalar(node.tag, node.value, node.implicit)
            except kubeyaml.Unreadable as e:
                self.fail(node.line, path, str(e))
            if (
                isinstance(value, bool)
                and node.implicit
                and not node.tag
                and node.value in kubeyaml.SURPRISING_BOOLEANS
            ):
                self.booleans[path] = node.value
            return value
        if not node.is_map:
            items = _GoList(self.decode(item, (*path, i)) for i, item in enumerate(node.items))
            items.lines = [item.line for item in node.items]
            return items
        out = into if into is not None else _GoMap(node.line)
        self.mapping(node, out, path)
        return out

    def mapping(self, node: _Collection, out: _GoMap, path: tuple[str | int, ...]) -> None:
        given: dict[tuple[str, Any], int] = {}  # keys written in this mapping -> their line
        for key_node, value_node in zip(node.items[::2], node.items[1::2], strict=True):
            if isinstance(key_node, _Scalar) and kubeyaml.is_merge(key_node.tag, key_node.value, key_node.implicit):
                before = {k: out.entries[k] for k in given if k in out.entries}
                self.merge(value_node, out, path)
                for k, entry in before.items():
                    if out.entries[k][1] != entry[1]:
                        self.notes.append(
                            f"{self.where}: line {key_node.line}: the merge (<<) replaces {field_path((*path, entry[3]))} "
                            f"given before it on line {entry[2]}: kubectl lets a merge override the keys written "
                            "before it (YAML says they win); put << first"
                        )
                continue
            key = self.decode(key_node, path)
            if isinstance(key, _GoMap | list):
                self.fail(key_node.line, path, "a key cannot be a mapping or a sequence (kubectl: invalid map key)")
            written = _written(key_node)
            label = _label(key)
            value = self.decode(value_node, (*path, label))
            go_key = kubeyaml.go_key(key)
            if go_key in given:
                self.notes.append(
                    f"{self.where}: line {key_node.line}: {field_path((*path, label))} is given twice in the same "
                    f"mapping (first on line {given[go_key]}); kubectl keeps only the last"
                )
            given[go_key] = key_node.line
            if (
                isinstance(key, bool)
                and isinstance(key_node, _Scalar)
                and key_node.value in kubeyaml.SURPRISING_BOOLEANS
            ):
                self.notes.append(
                    f"{self.where}: line {key_node.line}: the key {key_node.value} {'of ' + field_path(path) + ' ' if path else ''}"
                    f"is the boolean {label} to kubectl, so the key is \"{label}\"; quote it ('{key_node.value}') "
                    "if you meant the text"
                )
            out.entries[go_key] = (key, value, key_node.line, written)

    def merge(self, node: _Node, out: _GoMap, path: tuple[str | int, ...]) -> None:
        """``<<``: a mapping, an alias of one, or a sequence of those (the earlier ones win)."""
        target = node.target if isinstance(node, _Alias) else node
        if isinstance(target, _Collection) and target.is_map:
            self.decode(node, path, out)
            return
        if isinstance(node, _Collection) and not node.is_map:
            for item in reversed(node.items):
                item_target = item.target if isinstance(item, _Alias) else item
                if not (isinstance(item_target, _Collection) and item_target.is_map):
                    break
                self.decode(item, path, out)
            else:
                return
        self.fail(node.line, path, "map merge requires map or sequence of maps as the value")


def _written(node: _Node) -> str:
    """A key as written, for messages: 1, "1", *anchor."""
    if isinstance(node, _Alias):
        return f"*{node.name}"
    if isinstance(node, _Scalar):
        return node.value if node.implicit or node.tag else json.dumps(node.value)
    return "?"


def _label(key: Any) -> str:
    """A key as a path segment in messages: its JSON spelling when it has one."""
    try:
        return kubeyaml.key_string(key)
    except kubeyaml.Unreadable:
        return "~" if key is None else str(getattr(key, "value", key))


def _to_json(value: Any, where: str, path: tuple[str | int, ...] = (), line: int = 0) -> Any:
    """sigs.k8s.io/yaml's conversion (keys to strings), Go's JSON numbers, client-side apply's null pruning."""
    try:
        if isinstance(value, _GoMap):
            out: dict[str, Any] = {}
            first: dict[str, tuple[int, str]] = {}
            for key, item, key_line, written in value.entries.values():
                line = key_line
                name = kubeyaml.key_string(key)
                if name in first:
                    at = f"{field_path(path)}: " if path else ""
                    raise _Bounded(
                        f"{where}: line {key_line}: {at}the keys {first[name][1]} (line {first[name][0]}) and "
                        f'{written} (line {key_line}) both become the JSON key "{name}", and kubectl keeps one '
                        "of them at random: write only one"
                    )
                first[name] = (key_line, written)
                converted = _to_json(item, where, (*path, name), key_line)
                if converted is not None:  # kubectl apply drops nulls from mappings
                    out[name] = converted
            return out
        if isinstance(value, _GoList):
            return [_to_json(item, where, (*path, i), value.lines[i]) for i, item in enumerate(value)]
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        return kubeyaml.json_number(value)
    except kubeyaml.Unreadable as e:
        at = f"{field_path(path)}: " if path else ""
        raise _Bounded(f"{where}: line {line}: {at}{e}") from None


# ----------------------------------------------------------------------------- JSON
class _NotJson(ValueError):
    """NaN or Infinity: not JSON to Go, so kubectl tries the text as YAML."""


def _json_int(text: str) -> int | float:
    value = kubeyaml.parse_int(text, 10)
    return value if value is not None else _json_float(text)


def _json_float(text: str) -> int | float:
    value = float(text)
    if math.isinf(value):
        raise kubeyaml.Unreadable(f"the number {text} does not fit a float64, so kubectl refuses it")
    return kubeyaml.json_number(value)


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


_JSON_PROBE = json.JSONDecoder(parse_constant=_no_constant, parse_int=lambda t: 0, parse_float=lambda t: 0.0)
_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_int=_json_int, parse_float=_json_float)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _read_json(text: str, line0: int, where: str) -> Document:
    try:
        value = _JSON.decode(text)
    except kubeyaml.Unreadable as e:
        raise _Bounded(f"{where}: line {line0}: {e}") from None
    deepest, stack = 0, [(value, 0)]
    while stack:  # kubectl apply drops nulls from mappings; a lone surrogate escape is U+FFFD to Go
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            raise _Bounded(f"{where}: line {line0}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for k in [k for k, v in node.items() if v is None]:
                del node[k]
            for k in [k for k in node if _SURROGATE.search(k)]:
                node[_SURROGATE.sub("\ufffd", k)] = node.pop(k)
            items: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for k, v in list(items):
            if isinstance(v, str) and _SURROGATE.search(v):
                node[k] = _SURROGATE.sub("\ufffd", v)
            elif isinstance(v, dict | list):
                stack.append((v, depth + 1))
    return Document(value, line0)


def read_resource_file(path: Path) -> str:
    """The file's text, refusing files over MAX_FILE_BYTES without reading them whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ResourceError([f"{path}: cannot read: {e.strerror or e}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ResourceError(
            [
                f"{path}: larger than {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 1024} KiB); a resource file "
                "holds a few resources: split it, or shrink the grid"
            ]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResourceError([f"{path}: not UTF-8 text: {e}"]) from None
