#!/usr/bin/env python3
"""Prints the CustomResourceDefinitions of ALL (a multi-document YAML file,
Istio's crd-all.gen.yaml) whose names OURS (crds/istio.yaml) does not
define, so istiod gets its own CRDs for the kinds the mesh does not serve
and the mesh's stay as they are.

    crds-not-ours.py ALL OURS
"""
import re
import sys


def documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in re.split(r"(?m)^---\s*$", f.read()) if d.strip()]


def name(document):
    # metadata.name, the only key indented by two spaces named `name` before spec.
    match = re.search(r"(?m)^  name: (\S+)", document)
    return match.group(1) if match else None


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: crds-not-ours.py ALL OURS")
    ours = {name(d) for d in documents(sys.argv[2])}
    theirs = [d for d in documents(sys.argv[1]) if name(d) and name(d) not in ours]
    if not theirs:
        sys.exit(f"no CustomResourceDefinition of {sys.argv[1]} is missing from {sys.argv[2]}")
    print("\n---\n".join(d.strip("\n") for d in theirs))


main()
