"""Run a static tool (mypy, lint-imports) over the ``hazardlens`` namespace as it is installed.

``pyproject.toml`` maps one import namespace onto sibling folders (``core/`` is ``hazardlens``,
``datasets/`` is ``hazardlens.datasets``, ...). The editable install resolves that with an import hook,
which static tools cannot follow. This script builds a link tree with the installed layout,
``build/typecheck/hazardlens/`` (symlinks to the files of ``core/`` and to the other folders), runs
the command given after ``--`` with the tree first on ``PYTHONPATH``/``MYPYPATH``, and maps the paths
it prints back to the checkout (``build/typecheck/hazardlens/datasets/x.py`` -> ``datasets/x.py``).

    python .ci/linktree.py -- mypy
    python .ci/linktree.py -- lint-imports

The tree is rebuilt on every run (a few dozen links), so new files are always seen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def package_dirs() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(config["tool"]["setuptools"]["package-dir"])


def build(tree: Path = TREE) -> dict[str, str]:
    """Build the link tree; returns {tree-relative prefix: checkout-relative folder}, longest first."""
    mapping = package_dirs()
    if tree.exists():
        shutil.rmtree(tree)
    prefixes: dict[str, str] = {}
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = tree.joinpath(*package.split("."))
        source = ROOT / folder
        if package.count(".") == 0:  # the namespace root: a real folder, its children linked one by one
            target.mkdir(parents=True)
            for child in sorted(source.iterdir()):
                if child.name != "__pycache__" and not (target / child.name).exists():
                    (target / child.name).symlink_to(child)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():  # a core entry of the same name: the mapping wins
                target.unlink()
            target.symlink_to(source, target_is_directory=True)
        prefixes[target.relative_to(ROOT).as_posix() + "/"] = folder.rstrip("/") + "/"
    return dict(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    prefixes = build()
    env = dict(os.environ)
    for var in ("PYTHONPATH", "MYPYPATH"):
        env[var] = os.pathsep.join(p for p in (str(TREE), env.get(var, "")) if p)
    pattern = re.compile("|".join(re.escape(p) for p in prefixes))
    absolute = {f"{ROOT.as_posix()}/{k}": v for k, v in prefixes.items()}
    abs_pattern = re.compile("|".join(re.escape(p) for p in absolute))
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = abs_pattern.sub(lambda m: absolute[m.group(0)], line)
            sys.stdout.write(pattern.sub(lambda m: prefixes[m.group(0)], line))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
