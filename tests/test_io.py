import pytest

from toolkit.io import atomic_dir, atomic_path, write_jsonl


def test_interrupted_write_leaves_nothing(tmp_path):
    dest = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file(tmp_path):
    dest = write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert dest.read_text() == '{"x": 1}\n'


def test_atomic_dir_replaces_whole(tmp_path):
    dest = tmp_path / "model"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
