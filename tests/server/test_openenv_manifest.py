"""``openenv validate`` in its local mode on the repository's ``openenv.yaml`` (OpenEnv 0.10).

The local mode reads the manifest, checks it (static level) and would then build the image and
run it (runtime and semantic levels): without a Docker engine those are skipped, so the test
asks for ``--skip-build`` and requires every check that runs to pass. The package tree is
copied without virtual envs (OpenEnv fingerprints the whole tree and refuses symlinks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_openenv_validate_passes_the_manifest(openenv_python: Path, tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    package = tmp_path / "kernelenv"
    for name in files:
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, package / name)
    run = subprocess.run(
        [str(openenv_python.parent / "openenv"), "validate", str(package), "--skip-build",
         "--json"],
        capture_output=True, text=True, timeout=280,
    )
    report = json.loads(run.stdout)
    results = {r["check_id"]: r["status"] for r in report["results"]}
    assert results["static.manifest"] == "pass", report
    assert not [check for check, status in results.items() if status in ("fail", "error")]
    assert run.returncode == 0 and report["verdict"] in ("pass", "warn")

    manifest = yaml.safe_load((REPO / "openenv.yaml").read_text())
    assert (manifest["name"], manifest["port"]) == ("kernelenv", 8000)
    front = (REPO / "README.md").read_text().split("---\n")[1]
    space = yaml.safe_load(front)  # the Hugging Face Space's front matter
    assert (space["sdk"], space["app_port"], space["base_path"]) == ("docker", 8000, "/web")
    assert "openenv" in space["tags"]
