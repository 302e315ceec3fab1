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


def test_plain_blocks_are_exactly_the_lines_list_entry_leaves_alone():
    plain = [b"/data/a.fits\n/data/b/../x.fits.gz\n", b"/a\n/b", b"/data/#1.fits\n"]
    not_plain = [b"data/a.fits\n", b"/a\n\n/b\n", b"/a\n# comment\n", b"/a\n /b\n", b"/a\n/b \n", b"/a\t\n",
                 b"/a\r\n/b\n", b"//a\n", b"/a//b\n", b"/a/./b\n", b"/a/\n", b"/a/.\n", b"/a\n/b/", b"/a\n/b/.",
                 "/d\u00e9j\u00e0.fits\n".encode(), b"/a\x0c\n", b"/a\n\x1c/b\n",
                 b"/data/b c.fits\n"]  # a space: read line by line (safe, if slower)
    for data in plain:
        assert filelist.plain_block(data), data
        lines = data.decode().split("\n")
        assert [filelist.list_entry(x, None) for x in lines if x] == [x for x in lines if x]
    for data in not_plain:
        assert not filelist.plain_block(data), data


@pytest.mark.parametrize("block", [7, 64, 1 << 16])
def test_listed_files_read_in_blocks_are_the_expanded_inputs(tmp_path, block, monkeypatch):
    """Plain blocks and blocks with other lines (a comment, a relative path, a repeat, CRLF), a
    line longer than a block and a last line without a newline: the same paths as line by line."""
    monkeypatch.setattr(filelist, "_BLOCK_BYTES", block)
    monkeypatch.chdir(tmp_path)
    lines = [f"/data/s{k:04d}.fits" for k in range(300)]
    lines[40] = "# a comment"
    lines[120] = "rel.fits"
    lines[121] = "/data/" + "x" * 200 + ".fits"
    lines[200] = lines[10]
    text = "\n".join(lines[:250]) + "\r\n" + "\n".join(lines[250:])
    path = tmp_path / "list.txt"
    path.write_bytes(text.encode())
    expected = expand_inputs(f"@{path}")
    assert len(expected) == 298 and "rel.fits" in expected
    lf = ListedFiles(path, stride=16)
    assert list(lf) == expected and len(lf) == len(expected)
    for a, b in ((0, 5), (30, 130), (115, 125), (190, 298), (297, 298)):
        assert lf[a:b] == expected[a:b], (a, b)
