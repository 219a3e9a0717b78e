#!/usr/bin/env python3
"""The layer check of `make lint`: imports flow one way (docs/architecture.md).

Scans the Rust sources of each layered module under src/ for the crate
modules and the external crates it uses, and fails, naming file:line and
the rule, when a module reaches a layer it must not:

- api imports nothing of the crate but api, and not the gRPC/HTTP stack;
- model, translate and validate know neither kube nor the index nor the
  gRPC/HTTP stack; translate and validate know nothing of each other, nor
  of the servers above them;
- index does not import the gRPC/HTTP stack, nor the layers that read it;
- xds never imports webhook, and webhook never imports xds.

Test-only code (a `#[cfg(test)]` module, inline or in its own file, or one
also built for the fuzz targets, `#[cfg(any(test, feature = "fuzzing"))]`)
is not checked: tests may build their fixtures with the index and kube's types.
Comments and string literals are ignored.

Usage: scripts/layers.py [SRC_DIR]   (default: src next to this script)
       scripts/layers.py --self-test   plants violations in a copy of src
                                        and fails unless each is reported
"""

import os
import re
import shutil
import sys
import tempfile

# The gRPC/HTTP stack.
SERVER_CRATES = ["tonic", "hyper", "hyper_util", "axum", "tokio_rustls"]
# The Kubernetes client and its types.
KUBE_CRATES = ["kube", "k8s_openapi", "kube_lease_manager"]

# module -> (crate modules it may import besides itself, external crates it must not use, why)
RULES = {
    "api": (
        [],
        SERVER_CRATES,
        "api is Istio's CRDs as types: nothing of the crate but api, no gRPC/HTTP stack",
    ),
    "model": (
        ["api"],
        KUBE_CRATES + SERVER_CRATES,
        "model is plain data over api: no kube, no index, no gRPC/HTTP stack",
    ),
    "translate": (
        ["api", "model"],
        KUBE_CRATES + SERVER_CRATES,
        "translate is model -> Envoy, pure: no kube, no index, no gRPC/HTTP stack",
    ),
    "validate": (
        ["api", "model"],
        KUBE_CRATES + SERVER_CRATES,
        "validate is Istio's rules over api and model, pure: no kube, no index, no webhook, no xds",
    ),
    "index": (
        ["api", "model", "readiness"],
        SERVER_CRATES,
        "index is watch events -> model: no gRPC/HTTP stack, and nothing that reads it",
    ),
    "xds": (
        ["api", "model", "index", "translate", "ca", "readiness", "supervisor"],
        [],
        "xds serves translate's output: it never imports webhook (or app, status, monitoring)",
    ),
    "webhook": (
        ["api", "model", "index", "validate", "inject", "ca", "readiness"],
        [],
        "webhook serves validate and inject: it never imports xds (or app, status, monitoring)",
    ),
}

# Test-only, or test fixtures the fuzz targets share (feature `fuzzing`);
# matched on the stripped text, where the feature's name is blanked.
CFG_TEST = re.compile(r"#\[cfg\((?:test|any\(test,\s*feature\s*=\s*\))\)\]")
RAW_STRING = re.compile(r'b?r(#*)"')
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'")
# What follows a `#[cfg(test)]` when it marks a module: `mod x;` or `mod x {`.
MOD_AFTER_ATTRS = re.compile(
    r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*([;{])"
)
INLINE_MOD = re.compile(r"(?<![A-Za-z0-9_])mod\s+[A-Za-z_][A-Za-z0-9_]*\s*\{")


def strip(text):
    """The text with comments and string and char literals blanked out
    (newlines kept, so line numbers stay right)."""
    out = []
    i, n = 0, len(text)
    blank = lambda s: re.sub(r"[^\n]", " ", s)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(blank(text[i:end]))
            i = end
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif (
            c in "br"
            and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))
            and (m := RAW_STRING.match(text, i))
        ):
            close = '"' + m.group(1)
            end = text.find(close, m.end())
            end = n if end < 0 else end + len(close)
            out.append(blank(text[i:end]))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i : j + 1]))
            i = j + 1
        elif c == "'" and (m := CHAR.match(text, i)):
            out.append(blank(m.group(0)))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_path(src, path):
    """src/xds/server.rs -> ["xds", "server"]; src/xds/mod.rs -> ["xds"]."""
    parts = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def block_end(code, start):
    """The offset just past the `}` that closes the `{` before `start`."""
    depth, j = 1, start
    while j < len(code) and depth:
        depth += {"{": 1, "}": -1}.get(code[j], 0)
        j += 1
    return j


def inline_modules(code):
    """Spans of every inline `mod x { ... }`: a `super` inside climbs out of it first."""
    return [(m.start(), block_end(code, m.end())) for m in INLINE_MOD.finditer(code)]


def test_regions(code):
    """Spans of inline `#[cfg(test)] mod x { ... }`, and names of
    `#[cfg(test)] mod x;` declared in their own files."""
    spans, files = [], []
    for m in CFG_TEST.finditer(code):
        decl = MOD_AFTER_ATTRS.match(code, m.end())
        if not decl:
            continue
        if decl.group(2) == ";":
            files.append(decl.group(1))
            continue
        spans.append((m.start(), block_end(code, decl.end())))
    return spans, files


def test_files(src, sources):
    """Files that only exist for `#[cfg(test)]` modules, and what is under them."""
    out = set()
    for path, code in sources.items():
        here = os.path.dirname(path)
        stem = os.path.basename(path)[: -len(".rs")]
        # A non-mod.rs file's child modules live in a directory named after it.
        base = here if stem in ("mod", "lib", "main") else os.path.join(here, stem)
        for name in test_regions(code)[1]:
            out.add(os.path.join(base, name + ".rs"))
            out.add(os.path.join(base, name) + os.sep)
    return out


def is_test_file(path, tests):
    return path in tests or any(t.endswith(os.sep) and path.startswith(t) for t in tests)


def top_level_names(group):
    """`index::Index, model::{self, x}, api` -> ["index", "model", "api"]."""
    names, depth, item = [], 0, ""
    for c in group + ",":
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            head = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", item)
            if head:
                names.append(head.group(1))
            item = ""
        else:
            item += c
    return names


def crate_modules(code, module):
    """(offset, top-level crate module) for every path into the crate."""
    found = []
    nested = inline_modules(code)
    # crate::x, crate::{x, y}, and super::...::x chains that climb to the crate root.
    for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:super::)+|crate::)(\{|[A-Za-z_][A-Za-z0-9_]*)", code):
        prefix, head = m.group(1), m.group(2)
        if prefix.startswith("super"):
            depth = len(module) + sum(1 for a, b in nested if a <= m.start() < b)
            if prefix.count("super") != depth:
                continue
        if head == "{":
            j = block_end(code, m.end())
            names = top_level_names(code[m.end() : j - 1])
            found.extend((m.start(), name) for name in names if name != "self")
        elif head not in ("self", "super"):
            found.append((m.start(), head))
    return found


def external_crates(code, crates):
    pattern = re.compile(r"(?<![A-Za-z0-9_:])(" + "|".join(crates) + r")(?:::|\s*;|\s+as\b)")
    return [(m.start(), m.group(1)) for m in pattern.finditer(code)] if crates else []


def check(src):
    """The violations under `src`, as `path:line: rule` lines, and how many files were checked."""
    sources = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(root, f)
                with open(path, encoding="utf-8") as fh:
                    sources[path] = strip(fh.read())
    tests = test_files(src, sources)

    violations, checked = [], 0
    for path in sorted(sources):
        module = module_path(src, path)
        if not module or module[0] not in RULES or is_test_file(path, tests):
            continue
        checked += 1
        allowed, banned_crates, why = RULES[module[0]]
        code = sources[path]
        spans, _ = test_regions(code)
        in_test = lambda at: any(a <= at < b for a, b in spans)
        line = lambda at: code.count("\n", 0, at) + 1
        rel = os.path.relpath(path, os.path.dirname(src))
        for at, name in crate_modules(code, module):
            if name != module[0] and name not in allowed and not in_test(at):
                violations.append(f"{rel}:{line(at)}: {module[0]} imports crate::{name}; {why}")
        for at, name in external_crates(code, banned_crates):
            if not in_test(at):
                violations.append(f"{rel}:{line(at)}: {module[0]} uses the {name} crate; {why}")

    return violations, checked


# (file under src, line appended, the violation it must produce)
PLANTS = [
    ("translate/route.rs", "use crate::index::Index;", "translate imports crate::index"),
    ("translate/sidecar.rs", "use crate::{model, validate::Finding};", "translate imports crate::validate"),
    ("model/host.rs", "use kube::Client;", "model uses the kube crate"),
    ("validate/common.rs", "fn f(_: &crate::webhook::server::X) {}", "validate imports crate::webhook"),
    ("validate/common.rs", "use k8s_openapi::api::core::v1::Pod;", "validate uses the k8s_openapi crate"),
    ("index/kinds.rs", "fn f() -> Option<tonic::Status> { None }", "index uses the tonic crate"),
    ("api/status.rs", "use crate::model::ObjectKey;", "api imports crate::model"),
    ("api/schema.rs", "use axum::Router;", "api uses the axum crate"),
    ("xds/debug.rs", "use crate::webhook;", "xds imports crate::webhook"),
    ("webhook/admission.rs", "use super::super::xds;", "webhook imports crate::xds"),
]
# Appended too, and never reported: comments, strings, test modules.
IGNORED = """
// use crate::index::Index;
const IGNORED: &str = "use crate::index::Index; kube::Client";
#[cfg(test)]
mod planted_tests {
    use crate::index::Index;
    const BRACE: &str = "}";
}
"""


def self_test(src):
    """Plants one violation per rule in a copy of `src`; true when exactly those are reported."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "src")
        shutil.copytree(src, copy)
        for file, line, _ in PLANTS:
            with open(os.path.join(copy, file), "a", encoding="utf-8") as fh:
                fh.write(IGNORED + line + "\n")
        violations, _ = check(copy)
    expected = {(os.path.join("src", file), why) for file, _, why in PLANTS}
    got = {(v.split(":")[0], v.split(": ", 1)[1].split(";")[0]) for v in violations}
    for file, why in sorted(expected - got):
        print(f"layers self-test: {file}: not reported: {why}", file=sys.stderr)
    for file, why in sorted(got - expected):
        print(f"layers self-test: {file}: reported, but not planted: {why}", file=sys.stderr)
    if expected == got:
        print(f"layers self-test: all {len(PLANTS)} planted violations reported, nothing else")
    return expected == got


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    if args == ["--self-test"]:
        return 0 if self_test(os.path.normpath(os.path.join(here, "..", "src"))) else 1
    src = os.path.normpath(args[0] if args else os.path.join(here, "..", "src"))
    violations, checked = check(src)
    if checked == 0:
        print(f"layers: no layered module found under {src}", file=sys.stderr)
        return 2
    for v in violations:
        print(v, file=sys.stderr)
    if violations:
        print(f"layers: {len(violations)} import(s) against the layer rules (docs/architecture.md)", file=sys.stderr)
        return 1
    print(f"layers: {checked} files of {', '.join(RULES)} import only what their layer may")
    return 0


if __name__ == "__main__":
    sys.exit(main())
