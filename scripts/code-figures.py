#!/usr/bin/env python3
"""Prints figures of the code base that a review quotes before and after a clean-up.

Usage: python3 scripts/code-figures.py [ROOT]        a checkout (default this one), read only
       python3 scripts/code-figures.py --rev REV     a commit of this repository (git archive
                                                     into a temporary directory)

- the 10 longest functions of the shipped code (crates/*/src and src/, test modules, test
  files and the test-support crate left out), with their length in lines;
- module and crate import cycles, found by the repository's own checker
  (tests/no_import_cycles.rs, compiled with rustc into a temporary directory, so ROOT's
  target directory is never written);
- `unsafe` blocks, and the files they are in (shipped code and tests);
- `as` conversions to numeric, C and pointer types, in shipped code and in tests;
- duplicate pairs, from the `duplicates` tool when it is on PATH, with the rows outside the
  clap flag definitions (crates/cli/src/args/).

Rust is read as text with comments and literals blanked, which is exact enough for counts.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

TOP_FUNCTIONS = 10
ARGS_DIR = "crates/cli/src/args/"
CAST = re.compile(
    r"\bas\s+(?:\*\s*(?:const|mut)\b|(?:[A-Za-z_]\w*::)*(?:[ui](?:8|16|32|64|128|size)|f32|f64|c_\w+)\b)"
)


def strip(text):
    """`text` with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "/" and nxt == "*":
            depth = 0
            while i < n:
                if text.startswith("/*", i):
                    depth += 1
                    i += 2
                elif text.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif c == "r" and nxt in ('"', "#") and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            j = i + 1
            hashes = 0
            while j < n and text[j] == "#":
                hashes += 1
                j += 1
            if j >= n or text[j] != '"':
                out.append(c)
                i += 1
                continue
            end = text.find('"' + "#" * hashes, j + 1)
            end = n if end < 0 else end
            out.append(" " + "\n" * text.count("\n", i, end))
            i = end + 1 + hashes
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(" " + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and i + 2 < n and text[i + 2] == "'" and nxt != "\\":
            out.append(" ")
            i += 3
        elif c == "'" and nxt == "\\":
            j = text.find("'", i + 2)
            out.append(" ")
            i = (n if j < 0 else j) + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(code, open_at):
    """Index just past the brace that closes the one at `open_at`."""
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    return len(code)


def test_module_spans(code):
    """(start, end) of every `#[cfg(test)] mod name { … }` block."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", code):
        spans.append((m.start(), block_end(code, m.end() - 1)))
    return spans


def rust_files(root, dirs):
    files = []
    for d in dirs:
        files += glob.glob(os.path.join(root, d, "**", "*.rs"), recursive=True)
    return sorted(files)


def shipped_files(root):
    """Rust files of the shipped code: not tests, not the test-support crate, not test modules
    kept in their own file (`tests.rs`, `tests/`)."""
    out = []
    for f in rust_files(root, ["src"] + [os.path.relpath(d, root) for d in glob.glob(os.path.join(root, "crates", "*", "src"))]):
        rel = os.path.relpath(f, root)
        parts = rel.split(os.sep)
        if rel.startswith("crates/testkit/") or "tests" in parts[2:] or parts[-1] == "tests.rs" or "bin" in parts[1:-1]:
            continue
        out.append(f)
    return out


def longest_functions(root):
    found = []
    for f in shipped_files(root):
        code = strip(open(f, encoding="utf-8").read())
        spans = test_module_spans(code)
        for m in re.finditer(r"\bfn\s+(\w+)", code):
            if any(a <= m.start() < b for a, b in spans):
                continue
            body = re.compile(r"[{;]").search(code, m.end())
            if not body or code[body.start()] == ";":
                continue
            end = block_end(code, body.start())
            lines = code.count("\n", m.start(), end) + 1
            line = code.count("\n", 0, m.start()) + 1
            found.append((lines, f"{os.path.relpath(f, root)}:{line}", m.group(1)))
    found.sort(key=lambda x: (-x[0], x[1]))
    return found[:TOP_FUNCTIONS]


def unsafe_blocks(root):
    per_file = {}
    for f in rust_files(root, ["src", "crates", "tests", "benches"]):
        n = len(re.findall(r"\bunsafe\s*\{", strip(open(f, encoding="utf-8").read())))
        if n:
            per_file[os.path.relpath(f, root)] = n
    return per_file


def casts(root):
    shipped = set(shipped_files(root))
    counts = {"shipped": 0, "tests and test support": 0}
    for f in rust_files(root, ["src", "crates", "tests", "benches"]):
        code = strip(open(f, encoding="utf-8").read())
        if f in shipped:
            spans = test_module_spans(code)
            for m in CAST.finditer(code):
                counts["tests and test support" if any(a <= m.start() < b for a, b in spans) else "shipped"] += 1
        else:
            counts["tests and test support"] += len(CAST.findall(code))
    return counts


def cycles(root):
    """Lines from the repository's cycle checker, or why it could not run."""
    checker = os.path.join(root, "tests", "no_import_cycles.rs")
    if not os.path.exists(checker) or not shutil.which("rustc"):
        return ["(no tests/no_import_cycles.rs or no rustc)"]
    deps = [os.path.join(d, "debug", "deps") for d in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(root, "target"), os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target")) if d]
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "cycles")
        env = dict(os.environ, CARGO_MANIFEST_DIR=os.path.abspath(root))
        for rlib in sorted(p for d in deps for p in glob.glob(os.path.join(d, "libtempfile-*.rlib"))):
            build = subprocess.run(
                ["rustc", "--edition", "2024", "--test", checker, "--extern", f"tempfile={rlib}", "-L", os.path.dirname(rlib), "-o", exe],
                env=env, capture_output=True, text=True,
            )
            if build.returncode == 0:
                break
        else:
            return ["(could not build the checker: no usable tempfile rlib in a target directory)"]
        run = subprocess.run([exe, "--test-threads=1"], capture_output=True, text=True)
    out = run.stdout + run.stderr
    lines = []
    for name in ("no_module_imports_a_module_that_imports_it", "no_crate_depends_on_a_crate_that_depends_on_it"):
        ok = re.search(rf"test {name} \.\.\. ok", out) is not None
        lines.append(f"{name}: {'none' if ok else 'FOUND'}")
    listed = re.search(r"import cycles:\n(.*?)(?:\n\n|\nnote:|$)", out, re.S)
    if listed:
        lines += ["  " + l for l in listed.group(1).splitlines()]
    return lines


def duplicate_pairs(root):
    if not shutil.which("duplicates"):
        return None
    out = subprocess.run(["duplicates", "--repo", root, "--most", "200", "--seconds", "300"], capture_output=True, text=True).stdout
    rows = [l for l in out.splitlines() if re.match(r"D\d+ ", l)]
    head = out.splitlines()[0] if out else ""
    total = int(m.group(1)) if (m := re.match(r"(\d+) pairs", head)) else 0
    outside = [r for r in rows if not all(p.startswith(ARGS_DIR) for p in re.findall(r"(\S+):\d+-\d+", r))]
    return total, outside


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if len(sys.argv) == 3 and sys.argv[1] == "--rev":
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", here, "archive", sys.argv[2]], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", sys.argv[2]], capture_output=True, text=True).stdout.strip()
            report(tmp, f"commit {rev}")
        return
    root = sys.argv[1] if len(sys.argv) > 1 else here
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report(root, f"{root} ({rev or 'not a git checkout'})")


def report(root, what):
    print(f"# code figures of {what}")
    print(f"\n## longest functions (shipped code), top {TOP_FUNCTIONS}")
    for lines, where, name in longest_functions(root):
        print(f"{lines:5} lines  {name}  {where}")
    print("\n## import cycles (tests/no_import_cycles.rs)")
    for l in cycles(root):
        print(l)
    blocks = unsafe_blocks(root)
    shipped = {os.path.relpath(f, root) for f in shipped_files(root)}
    in_shipped = sum(n for f, n in blocks.items() if f in shipped)
    print(f"\n## unsafe blocks: {sum(blocks.values())} in {len(blocks)} files ({in_shipped} in shipped code)")
    for f, n in sorted(blocks.items()):
        print(f"{n:5}  {f}")
    c = casts(root)
    print(f"\n## `as` conversions: {sum(c.values())}")
    for k, v in c.items():
        print(f"{v:5}  {k}")
    d = duplicate_pairs(root)
    print("\n## duplicate pairs (duplicates)")
    if d is None:
        print("(duplicates is not on PATH)")
    else:
        total, outside = d
        print(f"{total} pairs; {len(outside)} outside {ARGS_DIR}")
        for r in outside:
            print("  " + r)


if __name__ == "__main__":
    main()
