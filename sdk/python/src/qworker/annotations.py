"""Reading pod annotations from a Kubernetes downward-API volume file.

The kubelet writes one annotation per line as ``key="value"``, where the value
is quoted with Go's ``%q`` verb (``strconv.Quote``): printable characters are
kept as UTF-8 and everything else is escaped (``\\"``, ``\\\\``, ``\\n``,
``\\t``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``, ...).  This module unquotes
such values exactly as Go's ``strconv.Unquote`` does, including octal escapes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ANNOTATION_CURRENT_POD_SPEC_HASH",
    "ANNOTATION_DRAIN",
    "DEFAULT_ANNOTATIONS_FILE",
    "AnnotationParseError",
    "go_unquote",
    "parse_annotations",
    "read_annotations",
]

log = logging.getLogger("qworker")

DEFAULT_ANNOTATIONS_FILE = "/etc/qworker/annotations"
ANNOTATION_DRAIN = "quickube.com/drain"
ANNOTATION_CURRENT_POD_SPEC_HASH = "quickube.com/current-pod-spec-hash"

_SIMPLE_ESCAPES: dict[str, int] = {
    "a": 0x07,
    "b": 0x08,
    "f": 0x0C,
    "n": 0x0A,
    "r": 0x0D,
    "t": 0x09,
    "v": 0x0B,
    "\\": 0x5C,
    '"': 0x22,
    "'": 0x27,
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCT_DIGITS = frozenset("01234567")


class AnnotationParseError(ValueError):
    """A value is not a valid Go double-quoted string."""


def go_unquote(quoted: str) -> str:
    """Unquote a Go double-quoted string literal (the output of ``%q``).

    ``\\x`` and octal escapes denote raw bytes (as in Go); the resulting byte
    string is decoded as UTF-8, invalid sequences becoming U+FFFD.
    """
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise AnnotationParseError(f"not a double-quoted string: {quoted!r}")
    body = quoted[1:-1]
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == '"':
            raise AnnotationParseError(f"unescaped quote at offset {i + 1}")
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise AnnotationParseError("trailing backslash")
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in _HEX_DIGITS for d in digits):
                raise AnnotationParseError(f"bad \\{e} escape at offset {i + 1}")
            value = int(digits, 16)
            if e == "x":
                out.append(value)
            else:
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    raise AnnotationParseError(f"invalid code point U+{value:X}")
                out += chr(value).encode("utf-8")
            i += 2 + width
        elif e in _OCT_DIGITS:
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in _OCT_DIGITS for d in digits):
                raise AnnotationParseError(f"bad octal escape at offset {i + 1}")
            value = int(digits, 8)
            if value > 0xFF:
                raise AnnotationParseError(f"octal escape out of range at offset {i + 1}")
            out.append(value)
            i += 4
        else:
            raise AnnotationParseError(f"unknown escape \\{e} at offset {i + 1}")
    return out.decode("utf-8", "replace")


def parse_annotations(text: str) -> dict[str, str]:
    """Parse the downward-API annotations format: one ``key="value"`` per line.

    Blank lines are ignored.  A malformed line is skipped with a warning rather
    than failing the whole file, so one odd annotation never stops a worker.
    A value that is not quoted is taken verbatim.
    """
    result: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            log.warning("annotations line %d has no key=value, skipped", lineno)
            continue
        value = value.strip()
        if value.startswith('"'):
            try:
                result[key] = go_unquote(value)
            except AnnotationParseError as exc:
                log.warning("annotations line %d (%s) skipped: %s", lineno, key, exc)
        else:
            result[key] = value
    return result


def read_annotations(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and parse an annotations file; a missing file means no annotations."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cannot read annotations file %s: %s", path, exc)
        return {}
    return parse_annotations(text)


def drain_reason(annotations: Mapping[str, str], pod_spec_hash: str | None) -> str | None:
    """Why the worker should leave between tasks, or ``None`` to keep going.

    Returns ``"drain"`` when ``quickube.com/drain`` has a non-empty value, and
    ``"stale-spec-hash"`` when ``quickube.com/current-pod-spec-hash`` is set
    (non-empty) and differs from this pod's ``POD_SPEC_HASH``.  Without a
    known ``POD_SPEC_HASH`` the hash check is skipped.
    """
    if annotations.get(ANNOTATION_DRAIN, ""):
        return "drain"
    current = annotations.get(ANNOTATION_CURRENT_POD_SPEC_HASH, "")
    if current and pod_spec_hash and current != pod_spec_hash:
        return "stale-spec-hash"
    return None
