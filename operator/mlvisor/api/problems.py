"""The one way a problem with a resource is put into words.

``mlvisor validate``, ``mlvisor run``, the trainer's exit message and the operator's
InvalidSpec condition all describe a pydantic ValidationError here, so the same mistake reads
the same wherever a user meets it: ``<field path>: <what was expected> (got <value>)``, the
path in camelCase as written in YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from mlvisor.api import kubeyaml
from mlvisor.api.resources import PATTERN_WORDS


class ResourceError(Exception):
    """One or more documents are not valid resources; str() lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def field_path(loc: tuple[Any, ...]) -> str:
    """('spec', 'supervision', 'failurePolicy', 0, 'action') -> 'spec.supervision.failurePolicy[0].action'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


#: The words kubectl's YAML reading (YAML 1.1) turns into each boolean, for the hint to quote them.
_BOOLEAN_WORDS = {True: "true, yes, y or on", False: "false, no, n or off"}


def _boolean_hint(got: bool, word: str | None) -> str:
    """Why a boolean arrived where text was expected, and what to write instead."""
    value = str(got).lower()
    if word is not None:
        return f'got {word}, which kubectl reads as the boolean {value}: write "{word}" in quotes if you meant the text'
    return (
        f"got the boolean {value}: kubectl reads an unquoted {_BOOLEAN_WORDS[got]} as {value}; "
        "quote the value if you meant the text"
    )


def _fits_unquoted(text: str, error_type: str) -> bool:
    """Whether ``text``, written without quotes, is what a field of this error's type takes."""
    wanted = {"int_type": (int,), "float_type": (int, float), "bool_type": (bool,)}.get(error_type)
    if wanted is None:
        return False
    try:
        value = kubeyaml.scalar(None, text, True)
        if isinstance(value, float | kubeyaml.Uint):
            value = kubeyaml.json_number(value)
    except kubeyaml.Unreadable:
        return False
    return isinstance(value, wanted) and (bool in wanted or not isinstance(value, bool))


def _expected(err: Mapping[str, Any], word: str | None = None) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "string_pattern_mismatch":
        words = PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")))
        if words:
            msg = f"expected {words}"
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; fields are camelCase)"
    if err["type"] == "missing":
        return "required field is missing"
    if "input" in err and err["type"] not in ("model_type", "dict_type"):
        got = err["input"]
        if isinstance(got, bool) and err["type"] in ("string_type", "enum", "literal_error"):
            return f"{msg} ({_boolean_hint(got, word)})"
        if isinstance(got, str) and _fits_unquoted(got, err["type"]):
            return (
                f"{msg} (got the text {got!r}: in quotes it is a string to kubectl and the API server; "
                f"write {got} without quotes)"
            )
        if not isinstance(got, dict | list):
            msg += f" (got {got!r})"
    return msg


def describe_validation_error(
    e: ValidationError, prefix: str = "", booleans: Mapping[tuple[str | int, ...], str] | None = None
) -> list[str]:
    """One line per problem: '<prefix><field path>: <what was expected>'.

    ``prefix`` goes before each line (a file and resource name, or ``spec.`` when a bare
    spec was validated). ``booleans``: field path -> the word (yes, on, n, ...) a boolean was
    written as (see :class:`mlvisor.api.documents.Document`), so the hint to quote it names it.
    """
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Drop pydantic's union/tag segments (e.g. 'int', 'str') that are not field names.
        loc = tuple(p for p in loc if p not in ("int", "str", "float", "bool"))
        word = (booleans or {}).get(tuple(loc))
        lines.append(f"{prefix}{field_path(loc)}: {_expected(err, word)}")
    return lines
