"""ListedFiles: a survey's @list read on demand gives expand_inputs' paths, in its order."""

import pytest

from cannonade.exceptions import ConfigError
from cannonade.spectra import filelist
from cannonade.spectra.filelist import ListedFiles
from cannonade.spectra.ingest import expand_inputs, input_files


def _tricky_list(tmp_path):
    """A list with repeats (also across checkpoints), comments, blank lines, relative paths (one
    found only beside the list), non-plain absolute paths, CRLF and bare-CR line ends."""
    d = tmp_path / "lists"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "rel.fits").write_bytes(b"")
    lines = ["# a comment", "", "/data/a.fits", "/data/b.fits", "sub/rel.fits", "/data/a.fits", "  /data/c.fits  ",
             "/data//d.fits", "/data/./e.fits", "/data/b.fits", "/data/f.fits", "/data/d.fits", "nowhere.fits",
             "/data/g.fits", "/data/a.fits", "/data/h.fits"]
    text = "\n".join(lines[:8]) + "\r\n" + "\r\n".join(lines[8:12]) + "\r" + "\r".join(lines[12:]) + "\n"
    path = d / "list.txt"
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("stride", [1, 2, 3, 1024])
def test_listed_files_are_the_expanded_inputs(tmp_path, stride, monkeypatch):
    path = _tricky_list(tmp_path)
    monkeypatch.chdir(tmp_path)  # 'sub/rel.fits' exists only beside the list: resolved there
    expected = expand_inputs(f"@{path}")
    assert str(path.parent / "sub" / "rel.fits") in expected and "/data/d.fits" in expected and "nowhere.fits" in expected
    assert len(expected) == len(set(expected)) == 10
    lf = ListedFiles(path, stride=stride)
    assert len(lf) == len(expected) and list(lf) == expected
    for a in range(len(expected) + 1):
        for b in range(a, len(expected) + 2):
            assert lf[a:b] == expected[a:b], (a, b)
    assert [lf[k] for k in range(-len(expected), len(expected))] == expected + expected
    assert lf[::2] == expected[::2]
    with pytest.raises(IndexError, match="out of range"):
        lf[len(expected)]
    got = input_files([f"@{path}"])
    assert isinstance(got, ListedFiles) and list(got) == expected
    assert input_files([f"@{path}", str(path)]) == expand_inputs([f"@{path}", str(path)])  # several inputs: a list


def test_hash_collisions_are_not_repeats(tmp_path, monkeypatch):
    """Every path hashes alike here: the candidates' paths are compared, so only true repeats go."""
    path = _tricky_list(tmp_path)
    expected = expand_inputs(f"@{path}")
    monkeypatch.setattr(filelist, "hash", lambda s: 7, raising=False)
    lf = ListedFiles(path, stride=2)
    assert list(lf) == expected and lf[3:7] == expected[3:7]


def test_list_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="list file .*missing.txt not found"):
        ListedFiles(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"/data/a.fits\n/data/\xff.fits\n")
    with pytest.raises(ConfigError, match=r"bad.txt: not UTF-8 text at byte 19"):
        ListedFiles(bad)
    good = tmp_path / "good.txt"
    good.write_text("".join(f"/data/{k}.fits\n" for k in range(10)))
    lf = ListedFiles(good, stride=4)
    assert lf[2:4] == ["/data/2.fits", "/data/3.fits"] and len(ListedFiles(tmp_path / "good.txt")) == 10
    good.write_text("".join(f"/data/{k}.fits\n" for k in range(11)))  # edited during the ingest
    with pytest.raises(ConfigError, match="good.txt changed while its files were being read"):
        lf[5:7]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert len(ListedFiles(empty)) == 0 and list(ListedFiles(empty)) == [] and ListedFiles(empty)[0:3] == []
