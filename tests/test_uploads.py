"""Zip and folder inputs: generated hostile archives, never committed binaries."""

import io
import stat
import zipfile

import pytest
from helpers import image_bytes

from bmc.serve.uploads import MAX_ENTRIES, SkippedFile, UploadError, iter_images


def read(paths):
    """Names of decoded images and skipped files, as the app and the count command see them."""
    names, skipped = [], []
    for item in iter_images(paths):
        if isinstance(item, SkippedFile):
            skipped.append(item)
        else:
            names.append(item[0])
    return names, skipped


def _zip(path, entries, symlinks=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_hostile_entries_are_skipped_with_reasons(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", image_bytes())
    archive = _zip(
        tmp_path / "cells.zip",
        [
            ("good/a.jpg", image_bytes()),
            ("b.png", image_bytes("PNG")),
            ("../escape.jpg", image_bytes()),
            ("/abs/path.jpg", image_bytes()),
            ("nested.zip", inner.getvalue()),
            ("notes.txt", b"hello"),
            ("broken.jpg", b"nope"),
        ],
        symlinks=[("link.jpg", "/etc/passwd")],
    )
    names, skipped = read([archive])
    assert names == ["cells.zip/good/a.jpg", "cells.zip/b.png"]
    reasons = {s.source.split("/", 1)[1]: s.reason for s in skipped}
    assert "unsafe path" in reasons["../escape.jpg"] and "unsafe path" in reasons["/abs/path.jpg"]
    assert "symbolic link" in reasons["link.jpg"]
    assert "nested archive" in reasons["nested.zip"]
    assert "not an image file type" in reasons["notes.txt"]
    assert "not an image" in reasons["broken.jpg"]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path.parent / "escape.jpg").exists()


def test_too_many_entries_is_refused(tmp_path):
    archive = _zip(tmp_path / "many.zip", [(f"{i}.jpg", b"x") for i in range(MAX_ENTRIES + 1)])
    with pytest.raises(UploadError, match="limit is 5000"):
        read([archive])


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"{i}.jpg", b"\0" * (100 * 1024 * 1024))  # 600 MB of zeros, ~600 kB packed
    assert archive.stat().st_size < 2_000_000
    with pytest.raises(UploadError, match="unpacks to"):
        read([archive])


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"PK but not really")
    with pytest.raises(UploadError, match="not a valid zip"):
        read([tmp_path / "fake.zip"])


def test_folder_input_recurses_and_lists_non_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(image_bytes())
    (tmp_path / "y.tif").write_bytes(image_bytes("TIFF"))
    (tmp_path / "z.csv").write_text("1,2")
    names, skipped = read([tmp_path])
    assert sorted(names) == ["a/x.jpg", "y.tif"]
    assert [s.source for s in skipped] == ["z.csv"]


@pytest.mark.parametrize("entries", [[], [("folder/", b""), ("folder/sub/", b"")]], ids=["empty", "only-folders"])
def test_an_archive_without_files_is_named(tmp_path, entries):
    archive = _zip(tmp_path / "cells.zip", entries)
    names, skipped = read([archive])
    assert names == [] and [(s.source, s.reason) for s in skipped] == [
        ("cells.zip", "the archive holds no files (it is empty, or holds only folders)")
    ]


def _tar(path, entries, links=()):
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_tar_archives_follow_the_zip_rules(tmp_path):
    archive = _tar(
        tmp_path / "cells.tar.gz",
        [
            ("slide/a.jpg", image_bytes()),
            ("b.png", image_bytes("PNG")),
            ("../escape.jpg", image_bytes()),
            ("/abs.jpg", image_bytes()),
            ("inner.tar", b"x"),
            ("notes.txt", b"hi"),
        ],
        links=[("link.jpg", "/etc/passwd")],
    )
    names, skipped = read([archive])
    assert names == ["cells.tar.gz/slide/a.jpg", "cells.tar.gz/b.png"]
    reasons = {s.source.split("/", 1)[1]: s.reason for s in skipped}
    assert "unsafe path" in reasons["../escape.jpg"] and "unsafe path" in reasons["/abs.jpg"]
    assert "nested archive" in reasons["inner.tar"] and "not an image file type" in reasons["notes.txt"]
    assert "link or special file" in reasons["link.jpg"]
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_tar_with_too_many_entries_or_a_damaged_stream_is_refused(tmp_path):
    many = _tar(tmp_path / "many.tgz", [(f"{i}.txt", b"") for i in range(MAX_ENTRIES + 1)])
    with pytest.raises(UploadError, match="more than 5000 files"):
        read([many])
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(_tar(tmp_path / "ok.tar.gz", [("a.jpg", image_bytes())]).read_bytes()[:40])
    with pytest.raises(UploadError, match="damaged.tar.gz"):
        read([damaged])
