"""Per-browser session folders (their checkpoints) are removed at start-up once unused for SESSION_DAYS."""
import os
import time

from vlmviz.views import session


def test_old_browser_folders_go_and_recent_ones_stay(tmp_path, monkeypatch):
    old, recent = tmp_path / "a", tmp_path / "b"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "run.safetensors").write_bytes(b"x")
    then = time.time() - 15 * 86400
    os.utime(old, (then, then))
    assert session.clean_old_sessions(root=tmp_path) == ["a"]  # 14 days by default
    assert not old.exists() and (recent / "run.safetensors").exists()
    monkeypatch.setenv("VLMVIZ_SESSION_DAYS", "0")
    assert session.clean_old_sessions(root=tmp_path) == ["b"]
    assert session.clean_old_sessions(root=tmp_path / "none") == []  # no folder yet: nothing to do


def test_using_a_folder_marks_it_as_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "SESSIONS_ROOT", tmp_path)
    folder = session.session_dir("owner1")
    then = time.time() - 30 * 86400
    os.utime(folder, (then, then))
    session.list_checkpoints("owner1")  # a browser that comes back (page load) keeps its folder
    assert session.clean_old_sessions(root=tmp_path) == []
