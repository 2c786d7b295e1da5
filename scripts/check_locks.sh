#!/usr/bin/env bash
# Check that lock files are complete and self-consistent in the Python environment that installed them.
#
#   scripts/check_locks.sh [--python PY] [--roots FILE.in]... [--allow-broken NAME]... LOCK [LOCK...]
#
# The locks are installed with `pip install --no-deps`, so nothing else checks that they hold everything their
# packages need. For every distribution pinned in the LOCKs (taken together, e.g. airflow.lock + dev.lock):
#   - it is installed in PY's environment at exactly the pinned version;
#   - its Requires-Python accepts PY's Python;
#   - every requirement in its metadata whose marker holds in PY's environment (extras followed transitively)
#     names a distribution that is pinned in the LOCKs, at a version the requirement accepts.
# Requirement metadata comes from PY's installed distributions (the lock installed there with --no-deps).
# --roots adds the requirements of an .in file as checked requirements (e.g. `moto[server,s3]` and its extras).
# --allow-broken NAME reports NAME's unsatisfied requirements without failing (super-gradients 3.7.1 and
# data-gradients 0.3.2 publish pins that cannot resolve on Python 3.11; the trainer lock overrides them on purpose).
#
# It runs in CI (tests/deploy/test_locks.py, against .venvs/*) and at image build time (Dockerfile), with the
# environment's own Python and its `packaging`, which every lock here pins. Exit status 1 when a check fails.
set -euo pipefail

python_bin="python3"
args=()
while (($#)); do
    case "$1" in
        --python)
            python_bin="$2"
            shift 2
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done

exec "${python_bin}" - "${args[@]}" <<'PYTHON'
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

parser = argparse.ArgumentParser(prog="check_locks.sh")
parser.add_argument("locks", nargs="+")
parser.add_argument("--roots", action="append", default=[], help="requirements (.in) file to check as well")
parser.add_argument("--allow-broken", action="append", default=[], help="distribution whose pins are ignored")
opts = parser.parse_args()


def read_requirement_lines(path: str) -> list[str]:
    lines = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    return lines


problems: list[str] = []
pins: dict[str, Version] = {}
for lock in opts.locks:
    for line in read_requirement_lines(lock):
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.marker or req.url:
            problems.append(f"{lock}: {line!r} is not an exact pin (name==version)")
            continue
        name, version = canonicalize_name(req.name), Version(specs[0].version)
        if name in pins and pins[name] != version:
            problems.append(f"{lock}: {req.name} pinned at {version}, but at {pins[name]} in an earlier lock")
        pins[name] = version

environment = default_environment()
python_version = Version(environment["python_full_version"].split("+")[0])
allowed_broken = {canonicalize_name(name) for name in opts.allow_broken}

# name -> (version, Requires-Python, Requires-Dist lines)
dists: dict[str, tuple[Version, str | None, list[str]]] = {}
for dist in metadata.distributions():
    name = canonicalize_name(dist.metadata["Name"] or "")
    if name and name not in dists:  # the first on sys.path wins, as for imports
        dists[name] = (Version(dist.version), dist.metadata.get("Requires-Python"), list(dist.requires or []))

for name, pinned in sorted(pins.items()):
    if name not in dists:
        problems.append(f"{name}=={pinned} is locked but not installed")
    elif dists[name][0] != pinned:
        problems.append(f"{name} is locked at {pinned} but {dists[name][0]} is installed")
    elif dists[name][1] and python_version not in SpecifierSet(dists[name][1]):
        problems.append(f"{name}=={pinned} requires Python {dists[name][1]}, not {python_version}")

ignored: list[str] = []
checked = 0


def check(requirement: Requirement, required_by: str) -> set[str]:
    """Check one requirement against the pins; return the extras it activates on the pinned distribution."""
    global checked
    checked += 1
    name = canonicalize_name(requirement.name)
    pinned = pins.get(name)
    problem = None
    if pinned is None:
        problem = f"{required_by} requires {requirement}, but {requirement.name} is not in the lock"
    elif not requirement.specifier.contains(pinned, prereleases=True):
        problem = f"{required_by} requires {requirement}, but the lock pins {requirement.name}=={pinned}"
    if problem and canonicalize_name(required_by.split("[")[0]) in allowed_broken:
        ignored.append(problem)
    elif problem:
        problems.append(problem)
    return set(requirement.extras) if pinned is not None else set()


# Walk the requirement graph: (distribution, extra) pairs, "" standing for the distribution's base requirements.
# A requirement under an extra is one whose marker holds with that extra and not without it.
queue: list[tuple[str, str]] = [(name, "") for name in pins]
for roots in opts.roots:
    for line in read_requirement_lines(roots):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            queue += [(canonicalize_name(requirement.name), extra) for extra in check(requirement, roots)]
visited: set[tuple[str, str]] = set()
while queue:
    name, extra = queue.pop()
    if (name, extra) in visited or name not in dists:  # a missing distribution is reported above
        continue
    visited.add((name, extra))
    for line in dists[name][2]:
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{name}: unparsable requirement {line!r} ({exc})")
            continue
        marker = requirement.marker
        base = marker is None or marker.evaluate({**environment, "extra": ""})
        applies = base if extra == "" else not base and marker is not None and marker.evaluate(
            {**environment, "extra": extra}
        )
        if applies:
            required_by = f"{name}[{extra}]" if extra else name
            queue += [(canonicalize_name(requirement.name), e) for e in check(requirement, required_by)]

print(
    f"check_locks: {len(pins)} pinned distributions in {', '.join(opts.locks)}; {checked} requirements checked "
    f"for Python {python_version} on {environment['sys_platform']}/{environment['platform_machine']}"
)
for problem in ignored:
    print(f"  ignored (--allow-broken): {problem}")
for problem in problems:
    print(f"  PROBLEM: {problem}")
if problems:
    print(f"check_locks: {len(problems)} problem(s)")
    sys.exit(1)
PYTHON
