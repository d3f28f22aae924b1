#!/usr/bin/env python3
"""Writes the link order of the operator's code run at rest (crates/operator/symbol-order.txt).

    scripts/symbol-order.py CALLGRIND_OUT BINARY > crates/operator/symbol-order.txt

CALLGRIND_OUT is a callgrind profile of BINARY (recorded with `--demangle=no`) taken while the
operator was at rest and reacting to queue pushes (docs/performance.md says how); the output
is the symbol of every function of BINARY that ran in it, one per line, sorted. The release
build places these first in `.text` (crates/operator/build.rs), so that the code a resting
operator runs shares a few pages instead of being spread over the whole executable.
"""

import sys


# Name lines, with the id space of their compressed names: a callee's object (`cob=`) or
# function (`cfn=`) defines a name that a later `ob=` or `fn=` refers to by its id alone.
PREFIXES = (("ob=", "ob"), ("cob=", "ob"), ("fn=", "fn"), ("cfn=", "fn"))


def functions(profile, binary):
    """Names of the functions of `binary` that have cost in the callgrind file `profile`."""
    names = {}  # (id space, compressed id) -> name
    obj = None
    found = set()
    current = None
    with open(profile, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            for prefix, space in PREFIXES:
                if line.startswith(prefix):
                    value = line[len(prefix):]
                    if value.startswith("("):
                        ident, _, name = value.partition(")")
                        name = name.strip()
                        if name:
                            names[(space, ident)] = name
                        value = names.get((space, ident), "")
                    if prefix == "ob=":
                        obj = value
                    elif prefix == "fn=":
                        current = value if obj == binary else None
                    break
            else:
                # A cost line (positions and Ir) of the current function: it ran.
                if current and line[:1] in "0123456789+-*" and line.strip():
                    found.add(current)
    return found


SAMPLE = """\
events: Ir
ob=(1) /lib/libc.so.6
fn=(1) memcpy
0 10
cob=(2) /bin/op
cfn=(2) _ZN2op4poll17h0123456789abcdefE
calls=1 0
0 40
ob=(2)
fn=(2)
0 30
fn=(3) _ZN2op4idle17h0000000000000000E
ob=(1)
fn=(4) free
0 5
ob=(2)
fn=(5) (below main)
0 1
"""


def self_test():
    """Checks the parser on a small profile: compressed names defined by `cob=`/`cfn=`
    lines, functions of other objects and functions without cost left out."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".out") as f:
        f.write(SAMPLE)
        f.flush()
        found = functions(f.name, "/bin/op")
    expected = {"_ZN2op4poll17h0123456789abcdefE", "(below main)"}
    assert found == expected, f"{found} != {expected}"
    print("symbol-order.py: self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    found = functions(sys.argv[1], sys.argv[2])
    if not found:
        sys.stderr.write(f"error: no function of {sys.argv[2]} has cost in {sys.argv[1]}\n")
        sys.exit(1)
    # Only link symbols: valgrind also names what it cannot attribute ("(below main)").
    for name in sorted(n for n in found if n and not any(c in n for c in " ()")):
        print(name)


if __name__ == "__main__":
    main()
