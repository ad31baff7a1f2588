"""The documentation (issue 26): the site builds strictly from the repository (a broken link or a page
missing from the navigation fails the build), its command-line reference and list of studies are generated
from the code, and the README stays a short entry point whose links resolve."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("mkdocs")
pytest.importorskip("material")


def _build(root, out):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})


def test_site_builds_strictly_with_generated_cli_and_studies(tmp_path):
    from orchestrator.cli import build_parser
    from search_spaces import list_studies

    proc = _build(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = [o for a in sub.choices["ablate"]._actions for o in a.option_strings if o.startswith("--")]
    assert len(flags) > 20
    missing = [f for f in flags if f not in cli]
    assert not missing, missing  # every flag of `ablate`, as the parser has it
    for command in ("dcnn-ablate ablate", "dcnn-ablate report", "dcnn-ablate train", "dcnn-ablate data generate"):
        assert command in cli, command
    studies = (tmp_path / "site" / "built-in-studies" / "index.html").read_text()
    for name in list_studies():
        assert f"--study {name}" in studies, name
    for page in ("report", "seeds-auto", "data", "pinn", "clusters", "speed", "faults", "extending", "models"):
        assert (tmp_path / "site" / page / "index.html").exists(), page


def test_a_broken_link_fails_the_build(tmp_path):
    """The strictness is real: the same site with one link to a page that does not exist does not build."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", copy / "docs")
    page = copy / "docs" / "faults.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    proc = _build(copy, tmp_path / "site")
    assert proc.returncode != 0 and "no-such-page.md" in proc.stderr, proc.stderr[-2000:]


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [x for x in links if not x.startswith(("http://", "https://"))]
    assert len(local) >= 10
    assert not [x for x in local if not (ROOT / x).exists()], local
