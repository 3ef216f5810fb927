"""The built web app shipped in the package (src/beseda/web/static) is exactly what its
sources (web/) build to, and the web sources pass their own checks: type check, lint, format
and unit tests (the TypeScript port of the client's cursor logic among them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
SHIPPED = ROOT / "src" / "beseda" / "web" / "static"

pytestmark = pytest.mark.timeout(300)


def npm() -> str:
    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: the web app's sources cannot be built here")
    return found


def installed() -> None:
    """``npm ci`` once (CI has the npm registry); a no-op when node_modules is current."""
    stamp = WEB / "node_modules" / ".package-lock.json"
    lock = WEB / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run([npm(), "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)


def run(*script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [npm(), "run", "--silent", *script], cwd=WEB, capture_output=True, text=True
    )


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_the_shipped_web_app_is_what_its_sources_build(tmp_path: Path) -> None:
    npm()
    installed()
    out = tmp_path / "static"
    built = run("build", "--", "--out", str(out))
    assert built.returncode == 0, built.stderr
    fresh, shipped = tree(out), tree(SHIPPED)
    assert sorted(fresh) == sorted(shipped), "run `make web` and commit the result"
    changed = [name for name in fresh if fresh[name] != shipped[name]]
    assert changed == [], f"out of date: {changed}; run `make web` and commit the result"
    # The page loads its assets by their hashed names and holds no inline script or style.
    html = shipped["index.html"].decode()
    assert any(name.startswith("app.") and name.endswith(".js") for name in shipped)
    assert "<script>" not in html
    assert "style=" not in html


def test_the_web_sources_type_check_lint_and_pass_their_unit_tests() -> None:
    npm()
    installed()
    for script in ("typecheck", "lint", "test"):
        result = run(script)
        assert result.returncode == 0, f"npm run {script}:\n{result.stdout}\n{result.stderr}"
