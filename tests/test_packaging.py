"""The wheel holds what napari and a user need, and its installed command runs.

Builds a wheel of this checkout (hatchling, in pip's isolated build environment,
fetched from the package index), installs it with ``--no-deps`` into a folder of its
own and runs the installed ``napari-unet --help`` from there (the dependencies come
from the running environment; the package itself from the wheel, not the source).
"""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import napari_unet

ROOT = Path(__file__).resolve().parents[1]
DIST = "napari_unet_paper"

pytestmark = pytest.mark.slow

# pip's words when the build requirements (hatchling) cannot be fetched
_OFFLINE = re.compile(
    r"No matching distribution found for hatchling|Could not find a version that satisfies"
    r"|Network is unreachable|Temporary failure in name resolution|Name or service not known"
    r"|Max retries exceeded|ProxyError|Connection refused|NewConnectionError|timed out",
    re.IGNORECASE,
)


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = _pip("wheel", "--no-deps", "-q", "-w", str(out), str(ROOT), cwd=out)
    if build.returncode != 0:
        if _OFFLINE.search(build.stderr + build.stdout):
            pytest.skip(f"cannot build the wheel, package index unreachable:\n{build.stderr}")
        pytest.fail(f"pip wheel failed:\n{build.stdout}\n{build.stderr}")
    [path] = out.glob(f"{DIST}-*.whl")
    return path


def _dist_info(names: list[str]) -> str:
    [dist_info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    return dist_info


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        dist_info = _dist_info(names)
        metadata = email.parser.Parser().parsestr(whl.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(whl.read(f"{dist_info}/entry_points.txt").decode())

    assert dist_info == f"{DIST}-{napari_unet.__version__}.dist-info"
    assert {"napari_unet/napari.yaml", "napari_unet/_models/nuclei.pt"} <= set(names)
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]

    assert metadata["Name"] == "napari-unet-paper"
    assert metadata["Version"] == napari_unet.__version__
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata.get_all("License-File") == ["LICENSE"]
    manifest = {"napari-unet-paper": "napari_unet:napari.yaml"}
    assert dict(entry_points["napari.manifest"]) == manifest
    assert dict(entry_points["console_scripts"]) == {"napari-unet": "napari_unet.cli:main"}


def test_installed_command_runs(wheel, tmp_path):
    target = tmp_path / "site"
    install = _pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    script = target / "bin" / "napari-unet"
    assert script.is_file()

    # run the installed script with this interpreter: the wheel's files come first on
    # sys.path (PYTHONPATH), the dependencies from this environment's site-packages
    run_script = (
        "import runpy, sys, napari_unet\n"
        "print('ORIGIN', napari_unet.__file__, file=sys.stderr)\n"
        "sys.argv = ['napari-unet', '--help']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    run = subprocess.run(
        [sys.executable, "-c", run_script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    [origin] = re.findall(r"^ORIGIN (.+)$", run.stderr, re.MULTILINE)
    assert Path(origin).is_relative_to(target), origin  # the wheel's copy, not src/
    assert "usage: napari-unet" in run.stdout
