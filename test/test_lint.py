"""Static checks of the whole workspace: ruff (ruff.toml: style, docstrings, complexity) and
mypy over the installed packages (mypy.ini)."""

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    """Every module under src/*/<package>/ type-checks; tests are not part of the check."""
    # /dev/null as cache directory: mypy writes no cache into the working tree.
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini",
                             "--cache-dir", "/dev/null"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout, result.stdout


def test_mypy_checks_every_package():
    config = configparser.ConfigParser()
    config.read(ROOT / "mypy.ini")
    checked = {f.strip() for f in config["mypy"]["files"].split(",")}
    packages = {f"src/{p.parent.name}/{p.parent.name}" for p in ROOT.glob("src/*/setup.py")}
    assert checked == packages
