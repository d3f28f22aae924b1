#!/usr/bin/env python3
"""Prints the operator crate's module import graph (from `use crate::...` and `crate::...` paths
in its sources) and checks it: no circle between modules, and no controller importing another
controller. Exits 1 on a violation. Run by scripts/test.

A module is a file under crates/operator/src (a folder's mod.rs is the folder); an edge A -> B
means A's code names something of B. Edges inside one controller's folder are allowed in both
directions only as parent -> child (mod.rs wires its files); two sibling files that import each
other are a circle."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "crates" / "operator" / "src"
PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
CONTROLLERS = "controllers"


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod tests { ... }` blocks (test code may reach anywhere)."""
    out, skip, depth = [], False, 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skip and line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("mod "):
            skip, depth = True, 0
            i += 1
            continue
        if skip:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                skip = False
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main() -> int:
    modules = {module_of(p): p for p in SRC.rglob("*.rs")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        text = strip_tests(path.read_text(encoding="utf-8"))
        text = re.sub(r"//.*", "", text)
        # `use crate::a::{b, c::d}` names a::b and a::c::d: resolve braces one level deep.
        for m in re.finditer(r"\buse\s+(crate|super)::([a-z_0-9:]*)\{([^}]*)\}", text):
            base = m.group(1) + "::" + m.group(2)
            for item in m.group(3).split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    text += f"\n{base}{item}"
        for m in PATH.finditer(text):
            segs = m.group(2).strip(":").split("::")
            if m.group(1) == "crate":
                here = []
            else:
                # `super` is the parent of this module (a folder's mod.rs is the folder).
                here = (mod.split("::") if mod else [])[:-1]
                while segs and segs[0] == "super":
                    here, segs = here[:-1], segs[1:]
            target = None
            for n in range(len(segs), 0, -1):
                cand = "::".join(here + segs[:n])
                if cand in modules:
                    target = cand
                    break
            if target and target != mod and not mod.startswith(target + "::") and target != "":
                edges[mod].add(target)
    problems = []
    # No controller imports another controller.
    def controller_of(m: str):
        parts = m.split("::")
        return parts[1] if len(parts) >= 2 and parts[0] == CONTROLLERS else None
    for a, targets in edges.items():
        for b in targets:
            ca, cb = controller_of(a), controller_of(b)
            if ca and cb and ca != cb:
                problems.append(f"controller {ca} imports controller {cb}: {a} -> {b}")
            if b.startswith(CONTROLLERS + "::") and not a.startswith(CONTROLLERS) and a not in ("run", "render", "lib", "") and not a.startswith("simulate"):
                problems.append(f"lower layer imports a controller: {a} -> {b}")
    # Circles (Tarjan's strongly connected components).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in sccs:
        problems.append("import circle: " + " <-> ".join(comp))
    problems = list(dict.fromkeys(problems))
    if "-v" in sys.argv:
        for a in sorted(edges):
            if edges[a]:
                print(f"{a or 'lib'} -> {', '.join(sorted(edges[a]))}")
    for p in problems:
        print(p)
    n = sum(len(t) for t in edges.values())
    print(f"module graph: {len(modules)} modules, {n} imports, {len(sccs)} circle(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
