#!/usr/bin/env python3
"""Lists the functions in the crates' non-test Rust code whose body is longer than a limit
(default 80 lines, the signature's lines not counted) and exits 1 if there is one. Run by
scripts/test, so that a long function is split into named steps before it lands.

Usage: scripts/function-length.py [--limit N] [PATH ...]   (default PATH: crates/*/src)

Test modules (`#[cfg(test)] mod ... { }`), tests/, benches/ and examples/ are not checked.
Braces inside strings, characters and comments are ignored."""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:(?:async|const|unsafe|extern\s+\"[^\"]*\")\s+)*fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def code_only(text: str) -> str:
    """`text` with comments, string and character literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = len(re.match(r"r(#*)\"", text[i:]).group(1))
            end = text.find('"' + "#" * hashes, i + 2 + hashes)
            j = n if end < 0 else end + 1 + hashes
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)  # a lifetime
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_module_lines(lines: list[str]) -> set[int]:
    """Line indexes inside `#[cfg(test)]` modules."""
    inside: set[int] = set()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub\s+)?mod\s+\w+\s*\{", lines[i + 1]):
            depth, j = 0, i + 1
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                inside.add(j)
                if depth == 0:
                    break
                j += 1
            i = j
        i += 1
    return inside


def long_functions(path: Path, limit: int):
    lines = code_only(path.read_text()).splitlines()
    skip = test_module_lines(lines)
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or i in skip:
            continue
        # The body starts at the first `{` after the signature; a `;` first is a declaration.
        j, col = i, line.find("fn ")
        while j < len(lines):
            rest = lines[j][col:] if j == i else lines[j]
            brace, semi = rest.find("{"), rest.find(";")
            if semi >= 0 and (brace < 0 or semi < brace):
                j = -1
                break
            if brace >= 0:
                break
            j += 1
        if j < 0 or j >= len(lines):
            continue
        depth, k = 0, j
        while k < len(lines):
            seg = lines[k][col:] if k == i else lines[k]
            depth += seg.count("{") - seg.count("}")
            if depth <= 0:
                break
            k += 1
        body = k - j - 1
        if body > limit:
            yield i + 1, m.group(1), body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80, help="most lines a body may have")
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args()
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    paths = args.paths or sorted(ROOT.glob("crates/*/src"))
    files = []
    for p in paths:
        if not p.exists():
            print(f"function-length: {p}: no such file or folder", file=sys.stderr)
            return 2
        files += sorted(p.rglob("*.rs")) if p.is_dir() else [p]
    found = 0
    for f in files:
        for line, name, body in long_functions(f, args.limit):
            found += 1
            rel = f.resolve().relative_to(ROOT) if f.resolve().is_relative_to(ROOT) else f
            print(f"{rel}:{line}: fn {name} has {body} lines (limit {args.limit})")
    if found:
        print(f"{found} function(s) longer than {args.limit} lines: split them into named steps")
        return 1
    print(f"no function longer than {args.limit} lines in {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
