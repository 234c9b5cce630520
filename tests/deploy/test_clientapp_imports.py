"""The module Flower loads in each per-message ``flwr-clientapp`` process imports no torch,
transformers or peft (some 5 s of CPU per message, four messages per client in a SecAgg+
round): what forwarding to the worker needs is light, the inline path imports the rest."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

HEAVY = ("torch", "transformers", "peft")


def test_the_clientapp_module_imports_no_torch() -> None:
    check = (
        "import sys; import fedkt.deploy.clientapp; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_flower_loads_the_light_module() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    components = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"] == "fedkt.deploy.clientapp:clientapp"
