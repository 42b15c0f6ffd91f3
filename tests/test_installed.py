"""Where a stage finds the git-ignored tool installs: its own checkout, else (in a queued or
temporary DVC experiment's copy, which has no ignored file) the repository DVC_ROOT names."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import installed


@pytest.fixture
def checkouts(tmp_path: Path) -> tuple[Path, Path]:
    """A repository and an experiment's copy of it (as .dvc/tmp/exps/<name> holds one)."""
    origin = tmp_path / "repo"
    copy = origin / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    return origin, copy


def test_the_checkouts_own_install_comes_first(checkouts, monkeypatch):
    origin, copy = checkouts
    for root in (origin, copy):
        (root / ".emu").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(origin))
    assert installed.installed(".emu", copy) == copy / ".emu"


def test_an_experiment_copy_uses_the_install_of_the_repository_it_came_from(checkouts, monkeypatch):
    origin, copy = checkouts
    (origin / "clients" / "js" / "node_modules").mkdir(parents=True)
    (copy / "clients" / "js").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(origin))
    got = installed.installed(installed.CLIENT_PACKAGES, copy)
    assert got == origin / "clients" / "js" / "node_modules"


@pytest.mark.parametrize("dvc_root", [None, "origin without it"])
def test_without_any_install_the_checkouts_path_is_named(checkouts, monkeypatch, dvc_root):
    """So that `run make emulators` points at the folder to fill."""
    origin, copy = checkouts
    if dvc_root is None:
        monkeypatch.delenv("DVC_ROOT", raising=False)
    else:
        monkeypatch.setenv("DVC_ROOT", str(origin))
    assert installed.installed(".emu", copy) == copy / ".emu"


def test_the_stages_look_up_both_installs_through_it(monkeypatch, tmp_path):
    """verify, bundle (the vectors on the profiles) and clients all resolve their tools here."""
    from stages import bundle, client_runs, verify

    (tmp_path / ".emu").mkdir()
    (tmp_path / "clients" / "js" / "node_modules").mkdir(parents=True)
    monkeypatch.setattr(installed, "ROOT", tmp_path / "empty copy")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert verify.emulators() == bundle.emulators() == tmp_path / ".emu"
    assert client_runs.client_dir() == tmp_path / "clients" / "js"
