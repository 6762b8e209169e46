import os

import pytest

from handray.core.atomic import atomic_directory, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(ValueError), atomic_write(path) as handle:
        handle.write("half")
        raise ValueError
    assert path.read_text() == "old"
    with atomic_write(path) as handle:
        handle.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    # Readable like any other new file, not owner-only as the temporary was.
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_directory_refuses_a_non_empty_target_and_replaces_on_overwrite(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError), atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
