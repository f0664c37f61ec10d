"""The layout holds: import contracts, lint and format, function length, the README's layout
table, and a CLI that answers `--help`, `devices` and argument errors without importing torch.

Oracles: import-linter's own analysis of the import graph, ruff, Python's `ast`, and
`sys.modules` of a fresh interpreter.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_FUNCTION_LINES = 120


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _layer_of() -> dict[str, int]:
    """Each package or module of the layers contract -> its layer (0 = the top)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return {
        name.strip(): i for i, layer in enumerate(layers["layers"]) for name in layer.split("|")
    }


def _layers() -> list[str]:
    return list(_layer_of())


def test_import_contracts_hold():
    # Execute: import-linter over the installed package (pyproject's [tool.importlinter])
    r = _run(str(BIN / "lint-imports"))
    # Assert
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "KEPT" in r.stdout


def test_layers_contract_names_every_package_and_module():
    # Prepare: every sub-package and public top-level module of edgetrain
    pkg = ROOT / "edgetrain"
    found = {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    # Assert: the layers contract covers each of them, and no private module sits at the root
    assert found == set(_layers())
    assert not [name for name in found if name.startswith("_")]


def test_ruff_lint_and_format_pass():
    lint = _run(str(BIN / "ruff"), "check", "edgetrain", "tests", "bench")
    fmt = _run(str(BIN / "ruff"), "format", "--check", "edgetrain", "tests", "bench")
    assert lint.returncode == 0, lint.stdout[-4000:]
    assert fmt.returncode == 0, fmt.stdout[-4000:]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_the_limit():
    too_long = [
        f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
        for p in sorted((ROOT / "edgetrain").rglob("*.py"))
        for name, line, n in _functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert not too_long, "split along natural seams: " + "; ".join(too_long)


def test_readme_layout_table_matches_the_layers_contract():
    # Prepare: the package names in the README's layout table
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {m for row in rows for m in re.findall(r"`edgetrain\.(\w+)`", row.split("|")[1])}
    # Assert: the same set as the layers contract, in the same order (lowest first)
    assert named == set(_layers())
    order = [re.findall(r"`edgetrain\.(\w+)`", row.split("|")[1])[0] for row in rows]
    ranks = [_layer_of()[n] for n in order]
    assert ranks == sorted(ranks, reverse=True), order


_NO_TORCH = """
import sys
from edgetrain.cli import main
try:
    rc = main({argv!r})
except SystemExit as e:
    rc = e.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", rc)
"""


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["--help"], 0),
        (["plan", "--help"], 0),
        (["devices"], 0),
        (["plan", "--model", "mcu-cnn", "--device", "rpi4", "--batch-size", "0"], 2),
        (["train", "--plan", "p.json", "--lr", "nan"], 2),
    ],
)
def test_cli_answers_help_devices_and_argument_errors_without_torch(argv, rc):
    r = subprocess.run(
        [sys.executable, "-c", _NO_TORCH.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.stdout.strip().splitlines()[-1] == f"NO-TORCH {rc}", r.stdout[-2000:] + r.stderr
    assert "Traceback" not in r.stderr


def test_strategy_catalog_names_the_module_of_each_system():
    # Oracle: the System object each strategy module defines
    from edgetrain.strategies import CATALOG, get_system

    for name, info in CATALOG.items():
        system = get_system(name.value)
        assert system.name is name
        assert sys.modules[info.module].SYSTEM is system


def test_every_cli_flag_is_documented_in_docs_cli_md():
    # Prepare: every sub-command's parser, stage commands included
    import argparse

    from edgetrain.cli import build_parser

    doc = (ROOT / "docs" / "cli.md").read_text()
    commands = ["devices", "models", "profile", "plan", "train", "data", "demo", "compile",
                "mcu-run", "bench", "federate", "export"]  # fmt: skip
    missing = []
    # Execute: walk the parsers (nested ones too: `data inspect`)
    for command in commands:
        top = build_parser([command])
        stack = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
        while stack:
            for name, sub in stack.pop().choices.items():
                for action in sub._actions:
                    if isinstance(action, argparse._SubParsersAction):
                        stack.append(action)
                    flags = [f for f in action.option_strings if f not in ("-h", "--help")]
                    if flags and not any(_documented(f, doc) for f in flags):
                        missing.append(f"{name} {flags[-1]}")
    # Assert
    assert not sorted(set(missing)), sorted(set(missing))


def _documented(flag: str, doc: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", doc) is not None
