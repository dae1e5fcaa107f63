#!/usr/bin/env python3
"""Fails when a module of src/ imports one that imports it back, directly or through
others: the data flows one way (docs/DESIGN.md "The parts"), and this keeps it so.

Reads `crate::…`, `super::…` and `self::…` paths in each file's non-test code (test
modules, `testing` helpers and comments left out) and resolves each to the module
file it names. A module using its own parent or children does not count: Rust's
`mod` declarations and re-exports make those pairs import each other by design.

    python3 scripts/module-cycles.py     # exit 0: no cycle; 1: each cycle's edges listed
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s*)?mod (tests|testing)\b")
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def modules():
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]) or any(p in ("tests", "testing", "contract") for p in parts):
                continue
            found[tuple(parts)] = path
    return found


def code_of(path):
    text = TEST_MODULE.split(open(path, encoding="utf-8").read())[0]
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))


def main():
    mods = modules()

    def resolve(segments):
        for n in range(len(segments), 0, -1):
            if tuple(segments[:n]) in mods:
                return tuple(segments[:n])
        return None

    edges = defaultdict(set)
    why = defaultdict(set)
    for module, path in mods.items():
        for match in PATH.finditer(code_of(path)):
            base = {"crate": [], "super": list(module[:-1]), "self": list(module)}[match.group(1)]
            segments = match.group(2).split("::")[1:]
            while segments and segments[0] == "super":
                base, segments = base[:-1], segments[1:]
            target = resolve(base + segments)
            related = target is None or target == module[: len(target)] or module == target[: len(module)]
            if not related:
                edges[module].add(target)
                why[(module, target)].add(f"{path}: {match.group(0)}")

    # The same at the level of the crate's top modules (`server`, `pipeline`, `proxy`,
    # …): `pipeline` using `server::connection` while `server` uses `pipeline` is a
    # cycle between the two even though no single file imports its importer.
    for (a, b), reasons in list(why.items()):
        if a[0] != b[0]:
            edges[a[:1]].add(b[:1])
            why[(a[:1], b[:1])] |= reasons

    def reaches(start, goal):
        seen, stack = {start}, [start]
        while stack:
            for nxt in edges[stack.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    cycles = sorted((a, b) for a in list(edges) for b in list(edges[a]) if reaches(b, a))
    for a, b in cycles:
        print(f"{'::'.join(a)} -> {'::'.join(b)}, which leads back: {sorted(why[(a, b)])[0]}")
    print(f"module cycles: {len(cycles)} edge(s) on a cycle, {len(mods)} modules read")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
