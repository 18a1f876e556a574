"""Packaging (issue 14, item 5): the simulator is a distribution of its own, outside the runtime.

Both wheels are built for real (pip and the hatchling backend, no network) and their file lists
read: the runtime wheel carries ``gateway/`` and its status page and no ``gateway_sim``, and names
the simulator only as its ``sim`` extra; the simulator's wheel (``sim/``) carries every module of
``gateway_sim/``. ``gateway sim`` without the simulator says how to install it, and no module of
``gateway/`` needs it. The Docker build context (what .dockerignore lets in) builds the runtime
wheel on its own, with no simulator in it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.cli import SIM_MISSING
from gateway.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("hatchling", reason="the build backend (pyproject.toml); .ci/run installs it")


def _wheel(project: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_runtime_wheel_has_the_gateway_and_not_the_simulator(tmp_path):
    wheel = _wheel(ROOT, tmp_path)
    names = wheel.namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert modules == {
        f"gateway/{p.relative_to(ROOT / 'gateway').as_posix()}" for p in (ROOT / "gateway").rglob("*.py")
    }
    assert {"gateway/static/status.html", "gateway/static/status.js", "gateway/static/status.css"} <= set(names)
    assert not [n for n in names if n.startswith("gateway_sim") or "__pycache__" in n]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    assert "Provides-Extra: sim" in text
    sim_requirement = [line for line in text.splitlines() if line.startswith("Requires-Dist: gateway-sim")]
    assert sim_requirement and all("extra == 'sim'" in r or "extra == 'dev'" in r for r in sim_requirement)
    assert f"@ {(ROOT / 'sim').as_uri()}" in sim_requirement[0]  # the copy being installed, wherever it is


def test_sim_wheel_has_every_simulator_module(tmp_path):
    wheel = _wheel(ROOT / "sim", tmp_path)
    names = set(wheel.namelist())
    expected = {f"gateway_sim/{p.name}" for p in (ROOT / "gateway_sim").glob("*.py")}
    assert {"gateway_sim/server.py", "gateway_sim/scenario.py", "gateway_sim/cli.py"} <= expected
    assert {n for n in names if n.endswith(".py")} == expected
    assert not [n for n in names if n.startswith("gateway/")]


def test_gateway_sim_without_the_simulator_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gateway_sim", None)  # makes `import gateway_sim...` fail as if absent
    monkeypatch.setitem(sys.modules, "gateway_sim.cli", None)
    assert cli_main(["sim", "--scenario", "config/scenarios/calm.yaml"]) == 1
    err = capsys.readouterr().err
    assert err == SIM_MISSING + "\n"
    assert 'pip install ".[sim]"' in err and err.count("\n") == 1


def test_no_gateway_module_imports_the_simulator():
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['gateway_sim'] = None\n"
        "import gateway\n"
        "for m in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        "    if m.name != 'gateway.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_docker_build_context_builds_a_wheel_without_the_simulator(tmp_path):
    """What .dockerignore lets into the image's build (``*`` then ``!`` entries) builds the runtime
    wheel on its own, and neither the context, the Dockerfile nor the wheel holds the simulator."""
    kept = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert kept and not [name for name in kept if "sim" in name]
    context = tmp_path / "context"
    for name in kept:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(source, context / name)
    names = _wheel(context, tmp_path / "wheel").namelist()
    assert "gateway/cli.py" in names and not [n for n in names if n.startswith("gateway_sim")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert not [line for line in copies if "sim" in line]
    assert "[sim]" not in dockerfile and "gateway-sim" not in dockerfile
