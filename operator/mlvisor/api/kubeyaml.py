"""How kubectl reads a YAML scalar, a mapping key and a number: the rules, in Python.

``kubectl apply -f`` turns each YAML document into JSON with sigs.k8s.io/yaml (v1.4.0 in
kubectl 1.33), which decodes it with its fork of go-yaml v2 into ``interface{}`` and then
converts keys to strings; kubectl and the API server then decode that JSON, keeping an integral
number as an int64 and any other as a float64, and re-encode it with Go's encoding/json. So a
plain scalar means what YAML 1.1 as go-yaml v2 resolves it means, which is not what PyYAML's
rules say:

- ``y``, ``Y``, ``yes``, ``on``, ``n``, ``no``, ``off`` (and capitalised forms) are booleans;
- ``1e-2`` is the float 0.01 (an exponent needs no dot), ``1e3`` and ``1.0`` end up as the
  integers 1000 and 1 (Go writes an integral float64 below 1e21 without a dot or exponent, and
  the API server reads that back as an integer);
- integers follow Go's ``strconv.ParseInt`` with base 0 after dropping underscores: ``0x1F``,
  ``0o17`` and ``017`` (octal), ``0b101``; beyond int64 they become floats (``08`` too);
- ``.inf`` and ``.nan`` are floats that JSON cannot carry, so kubectl refuses them;
- dates and times stay strings; quoted scalars and ``!!str`` are strings; ``!!int``,
  ``!!float``, ``!!bool``, ``!!null``, ``!!timestamp`` and ``!!binary`` are checked or decoded;
  any other tag is ignored and the scalar is a string;
- a key that is an integer, a float or a boolean becomes its string (``0`` -> "0",
  ``1.5`` -> "1.5" printed as a float32, ``y`` -> "true"); a null key, a key beyond int64 and a
  mapping or sequence key are refused.

Everything here is a pure function of strings and numbers; :mod:`mlvisor.api.documents` walks
the YAML events and applies it. Written from the Go sources named above, not copied.
"""

from __future__ import annotations

import base64
import calendar
import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

TAG_PREFIX = "tag:yaml.org,2002:"
STR, BOOL, INT, FLOAT, NULL = (TAG_PREFIX + t for t in ("str", "bool", "int", "float", "null"))
TIMESTAMP, BINARY, MERGE = (TAG_PREFIX + t for t in ("timestamp", "binary", "merge"))
_RESOLVABLE = frozenset({"", STR, BOOL, INT, FLOAT, NULL, TIMESTAMP})

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

#: The plain words go-yaml v2 reads as a boolean, a null or an infinite or undefined float.
_WORDS: dict[str, Any] = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], None),
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}
#: Boolean words whose meaning surprises: everything but true/false in their three spellings.
SURPRISING_BOOLEANS = frozenset(w for w, v in _WORDS.items() if isinstance(v, bool)) - {
    "true", "True", "TRUE", "false", "False", "FALSE"}

# The first character decides what a plain scalar may be (go-yaml's resolve table).
_HINT = {**dict.fromkeys("+-", "S"), **dict.fromkeys("0123456789", "D"), **dict.fromkeys("yYnNtTfFoO~", "M"),
         ".": "."}
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_DECIMAL_FLOAT = re.compile(r"[-+]?([0-9_]+\.?[0-9_]*|\.[0-9_]+)([eE][-+]?[0-9_]+)?")


class Unreadable(ValueError):
    """kubectl refuses this scalar, key or number; str() says why, in words for the user."""


@dataclass(frozen=True)
class Uint:
    """An integer above int64 (go-yaml's uint64): a float once it is JSON, and never a key."""

    value: int


def short_tag(tag: str) -> str:
    return "!!" + tag[len(TAG_PREFIX):] if tag.startswith(TAG_PREFIX) else tag


# ----------------------------------------------------------------------------- Go's strconv
def _underscore_ok(s: str) -> bool:
    """strconv's rule: an underscore only between digits, or between a base prefix and a digit."""
    saw, i = "^", 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i, saw, hexa = 2, "0", s[1].lower() == "x"
    for c in s[i:]:
        if c.isascii() and (c.isdigit() or (hexa and c.lower() in "abcdef")):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def parse_int(s: str, base: int = 0, *, unsigned: bool = False) -> int | None:
    """strconv.ParseInt(s, base, 64) (or ParseUint): None where Go returns an error.

    Base 0 reads a prefix as Go does: 0x hex, 0o or a bare leading 0 octal, 0b binary. go-yaml
    removes every underscore before calling, so none is expected here.
    """
    sign = 1
    if s[:1] in ("+", "-"):
        if unsigned:
            return None
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if base == 0:
        base = 10
        if s[:1] == "0":
            prefix = s[1:2].lower()
            if prefix in ("x", "o", "b"):
                base, s = {"x": 16, "o": 8, "b": 2}[prefix], s[2:]
            else:
                base, s = 8, s[1:] or "0"
    s = s.lstrip("0") or ("0" if s else "")  # leading zeros change nothing (and keep int() quick)
    if not s or len(s) > 64 or not all(c in "0123456789abcdefghijklmnopqrstuvwxyz"[:base] for c in s.lower()):
        return None
    value = sign * int(s, base)
    if unsigned:
        return value if value <= UINT64_MAX else None
    return value if INT64_MIN <= value <= INT64_MAX else None


def parse_float(s: str) -> float | None:
    """strconv.ParseFloat(s, 64) for decimal text: None for bad syntax and for overflow."""
    if not _GO_DECIMAL_FLOAT.fullmatch(s) or not any(c.isdigit() for c in s.split("e")[0].split("E")[0]):
        return None
    if "_" in s and not _underscore_ok(s):
        return None
    value = float(s.replace("_", ""))
    return None if math.isinf(value) else value


# ----------------------------------------------------------------------------- timestamps
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:[Tt](\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,]\d+)?(Z|[+-]\d\d:\d\d))"
    r"|(?: (\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,]\d+)?))?"
)


def is_timestamp(s: str) -> bool:
    """go-yaml v2's parseTimestamp: one of its four time.Parse layouts matches the whole text."""
    m = _TIMESTAMP.fullmatch(s)
    if not m:
        return False
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    # (Go's calendar is proleptic Gregorian: year 0 is a leap year, as 2000 is)
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year or 2000, month)[1]:
        return False
    hms = [int(x) for x in (m[4], m[5], m[6]) if x is not None] or [int(x) for x in (m[8], m[9], m[10]) if x]
    if hms and not (hms[0] < 24 and hms[1] < 60 and hms[2] < 60):
        return False
    zone = m[7]
    return not (zone and zone != "Z" and (int(zone[1:3]) > 24 or int(zone[4:6]) > 60))


# ----------------------------------------------------------------------------- scalars
def _resolve_plain(tag: str, value: str) -> tuple[str, Any]:
    hint = _HINT.get(value[0]) if value else "N"
    if hint is not None and tag not in (STR, BINARY):
        if value in _WORDS:
            word = _WORDS[value]
            return (NULL if word is None else BOOL if isinstance(word, bool) else FLOAT), word
        if hint == ".":
            f = parse_float(value)
            if f is not None:
                return FLOAT, f
        elif hint in ("D", "S"):
            if tag in ("", TIMESTAMP) and is_timestamp(value):
                return TIMESTAMP, value
            plain = value.replace("_", "")
            i = parse_int(plain)
            if i is not None:
                return INT, i
            u = parse_int(plain, unsigned=True)
            if u is not None:
                return INT, Uint(u)
            if _YAML_STYLE_FLOAT.fullmatch(plain):
                f = parse_float(plain)
                if f is not None:
                    return FLOAT, f
            if plain.startswith("0b"):  # go-yaml's own binary fallback (takes a sign after 0b)
                i = parse_int(plain[2:], 2)
                if i is not None:
                    return INT, i
                u = parse_int(plain[2:], 2, unsigned=True)
                if u is not None:
                    return INT, Uint(u)
            elif plain.startswith("-0b"):
                i = parse_int("-" + plain[3:], 2)
                if i is not None:
                    return INT, i
    return STR, value


def resolve(tag: str, value: str) -> tuple[str, Any]:
    """go-yaml v2's resolve(tag, value): (the tag it resolved to, the value)."""
    if tag not in _RESOLVABLE:
        return tag, value
    rtag, out = _resolve_plain(tag, value)
    if tag in ("", rtag, STR, BINARY):
        return rtag, out
    if tag == FLOAT and rtag == INT and isinstance(out, int):  # !!float 1 is 1.0; a uint64 is not
        return FLOAT, float(out)
    raise Unreadable(f"cannot decode {short_tag(rtag)} `{value}` as a {short_tag(tag)}")


def _go_string(data: bytes) -> str:
    """Bytes as Go's encoding/json writes them: each byte of invalid UTF-8 becomes U+FFFD."""
    out, i = [], 0
    while True:
        try:
            out.append(data[i:].decode("utf-8"))
            return "".join(out)
        except UnicodeDecodeError as e:
            out.append(data[i : i + e.start].decode("utf-8") + "\ufffd" * (e.end - e.start))
            i += e.end


def scalar(tag: str | None, value: str, plain_implicit: bool) -> Any:
    """The Go value go-yaml v2 decodes a scalar into inside ``interface{}``.

    ``tag`` is the scalar's explicit tag (None or "" if it has none; "!" for the non-specific
    tag), ``plain_implicit`` whether it is plain and untagged (or tagged "!"). Returns None,
    a bool, an int (int64), a :class:`Uint`, a float or a str; raises :class:`Unreadable`.
    """
    tag = tag or ""
    if not tag and not plain_implicit:
        return value  # quoted, no tag: a string
    rtag, out = resolve(tag, value)
    if rtag == BINARY:
        try:
            data = base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
        except ValueError:
            raise Unreadable("!!binary value contains invalid base64 data") from None
        return _go_string(data)
    if rtag == TIMESTAMP:
        return value  # kept as written when decoded into interface{}
    return out


def is_merge(tag: str | None, value: str, plain_implicit: bool) -> bool:
    """A ``<<`` key: plain (or !!merge), so that ``"<<"`` in quotes is an ordinary key."""
    return value == "<<" and (plain_implicit or tag == MERGE)


# ----------------------------------------------------------------------------- keys and numbers
def go_key(value: Any) -> tuple[str, Any]:
    """The identity of a key in Go's map[interface{}]interface{}: its type and its value.

    1 and 1.0 and "1" are three keys to Go (all written "1" in JSON); NaN is never equal to
    itself, so each NaN key is its own.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Uint):
        return ("uint", value.value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", object() if math.isnan(value) else value)
    if value is None:
        return ("null", None)
    return ("str", value)


def _float32_shortest(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 32): the shortest digits that read back as the same float32."""
    try:
        f32 = struct.unpack("f", struct.pack("f", f))[0]
    except OverflowError:  # beyond float32: Go's conversion gives an infinity
        f32 = math.copysign(math.inf, f)
    if math.isinf(f32):
        return "+Inf" if f32 > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f32) < 0 else ""
    if f32 == 0:
        return sign + "0"
    for places in range(9):
        text = f"{abs(f32):.{places}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == abs(f32):
            break
    mantissa, exponent = text.split("e")
    digits, exp = mantissa.replace(".", "").rstrip("0") or "0", int(exponent)
    if exp < -4 or exp >= 6:  # %e, with at least two exponent digits, as Go writes it
        return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    point = exp + 1  # digits before the decimal point
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def key_string(value: Any) -> str:
    """The JSON key sigs.k8s.io/yaml writes for a decoded key; Unreadable for the ones it refuses."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Uint):
        raise Unreadable(f"the key {value.value} is above the largest int64 (9223372036854775807), "
                         "which kubectl cannot use as a key; quote it")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        s = _float32_shortest(value)
        return {"+Inf": ".inf", "-Inf": "-.inf"}.get(s, s)
    raise Unreadable("a key cannot be null (~, null or nothing): a JSON key is a string; kubectl refuses it")


def json_number(value: int | float | Uint) -> int | float:
    """A number as the API server stores it and a JSON reader gets it back.

    Go's encoding/json writes a float64 that is integral and below 1e21 with neither dot nor
    exponent (its shortest digits, zero-padded), which the API server then reads as an integer;
    an integer beyond int64 goes through a float64 first. NaN and infinities cannot be JSON.
    """
    if isinstance(value, Uint):
        value = float(value.value)
    if isinstance(value, int):
        return value
    if math.isnan(value) or math.isinf(value):
        raise Unreadable(f"{'NaN' if math.isnan(value) else 'an infinity'} cannot be written in JSON, "
                         f"so kubectl refuses it (json: unsupported value: {_go_special(value)})")
    if value.is_integer() and abs(value) < 1e21:
        return int(Decimal(repr(value)))
    return value


def _go_special(value: float) -> str:
    return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
