"""Where first-use C++ builds go (trainers/jit.py): one folder per Python environment, unless the user says."""

import sys
from pathlib import Path

from trainers.jit import extensions_dir


def test_an_explicit_torch_extensions_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == str(tmp_path)


def test_a_virtual_environment_keeps_its_builds_inside_itself(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert extensions_dir() == str(tmp_path / "venv" / "torch_extensions")


def test_interpreters_outside_a_venv_get_separate_cache_folders(monkeypatch):
    """Two installations sharing one folder would each find the other's build stale and rebuild it."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folders = set()
    for prefix in ("/usr", "/opt/conda"):
        monkeypatch.setattr(sys, "prefix", prefix)
        monkeypatch.setattr(sys, "base_prefix", prefix)
        folder = Path(extensions_dir())
        assert folder.parent == Path.home() / ".cache" / "dpost" / "torch_extensions"
        folders.add(folder)
    assert len(folders) == 2
