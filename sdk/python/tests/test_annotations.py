from __future__ import annotations

from pathlib import Path

import pytest

from qworker import parse_annotations, read_annotations
from qworker.annotations import AnnotationParseError, drain_reason, go_unquote


def test_simple_and_multiple_keys() -> None:
    text = (
        'kubernetes.io/config.seen="2024-01-01T00:00:00Z"\n'
        'quickube.com/drain="true"\n'
        'quickube.com/current-pod-spec-hash="5f7d9c"\n'
    )
    assert parse_annotations(text) == {
        "kubernetes.io/config.seen": "2024-01-01T00:00:00Z",
        "quickube.com/drain": "true",
        "quickube.com/current-pod-spec-hash": "5f7d9c",
    }


def test_go_quoted_escapes() -> None:
    # As Go's fmt %q writes them.
    text = r'a="say \"hi\"" ' + "\n" + r'b="C:\\path\\x"' + "\n" + r'c="line1\nline2\ttab"' + "\n"
    assert parse_annotations(text) == {
        "a": 'say "hi"',
        "b": "C:\\path\\x",
        "c": "line1\nline2\ttab",
    }


def test_unicode_hex_and_octal_escapes() -> None:
    assert go_unquote(r'"\x41\u00e9\U0001F600\101"') == "Aé😀A"
    assert go_unquote('"héllo ☃"') == "héllo ☃"  # printable UTF-8 is kept as is
    assert go_unquote(r'"\xc3\xa9"') == "é"  # \x escapes are bytes of UTF-8
    assert go_unquote(r'"\a\b\f\r\v"') == "\a\b\f\r\v"
    assert go_unquote('""') == ""


def test_equals_sign_and_json_in_value() -> None:
    text = r'kubectl.kubernetes.io/last-applied-configuration="{\"a\":\"b=c\"}\n"' + "\n"
    assert parse_annotations(text) == {"kubectl.kubernetes.io/last-applied-configuration": '{"a":"b=c"}\n'}


@pytest.mark.parametrize("bad", ['"abc', '"a\\"', '"\\q"', '"\\x4"', '"\\u12"', '"a"b"', '"\\400"', "abc"])
def test_invalid_quoted_strings(bad: str) -> None:
    with pytest.raises(AnnotationParseError):
        go_unquote(bad)


def test_malformed_lines_are_skipped_not_fatal() -> None:
    text = 'good="1"\nno-equals-sign\n=novalue\nbad="\\q"\n\n   \nalso="2"\n'
    assert parse_annotations(text) == {"good": "1", "also": "2"}


def test_missing_file_means_no_annotations(tmp_path: Path) -> None:
    assert read_annotations(tmp_path / "nope" / "annotations") == {}


def test_read_file(tmp_path: Path) -> None:
    f = tmp_path / "annotations"
    f.write_text('quickube.com/drain="yes"\nx="\\\\"\n', encoding="utf-8")
    assert read_annotations(f) == {"quickube.com/drain": "yes", "x": "\\"}


def test_drain_reason() -> None:
    assert drain_reason({}, "h1") is None
    assert drain_reason({"quickube.com/drain": ""}, "h1") is None
    assert drain_reason({"quickube.com/drain": "true"}, "h1") == "drain"
    assert drain_reason({"quickube.com/current-pod-spec-hash": "h1"}, "h1") is None
    assert drain_reason({"quickube.com/current-pod-spec-hash": "h2"}, "h1") == "stale-spec-hash"
    # Without a known own hash the rollout check cannot be made.
    assert drain_reason({"quickube.com/current-pod-spec-hash": "h2"}, None) is None
    # An empty annotation is treated as not set.
    assert drain_reason({"quickube.com/current-pod-spec-hash": ""}, "h1") is None
