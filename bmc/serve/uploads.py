"""Reading many user-supplied images safely: folders, loose files, zip and tar archives.

Archives are read in memory entry by entry and never extracted, so a crafted entry name
(``../../etc/passwd``, an absolute path) cannot write anywhere; links, nested archives,
oversize entries, and archives with too many entries or too much uncompressed data (zip bombs)
are refused or listed as skipped, each with the reason. Zip and tar (plain, gzip, bzip2, xz)
follow the same rules.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from PIL import Image

from bmc.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, ImageError, SkippedFile, open_image

MAX_ENTRIES = 5000
"""More entries than this in one upload is refused (a slide's differential is a few hundred cells)."""
MAX_TOTAL_BYTES = 500 * 1024 * 1024
"""Total uncompressed size accepted from one archive."""


class UploadError(ValueError):
    """The upload as a whole is refused (too many entries, zip bomb, not a zip…)."""


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _archive_kind(name: str) -> str | None:
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return "zip"
    return "tar" if lowered.endswith(ARCHIVE_SUFFIXES[1:]) else None


def _entry_problem(name: str, size: int) -> str | None:
    """Why an archive entry is not read (None: read it): the rules zip and tar share."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
        return "unsafe path inside the archive (absolute or '..'): ignored"
    if _archive_kind(name):
        return "nested archive: unpack it and upload its images"
    if pure.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file type ({pure.suffix.lower() or 'no extension'})"
    if size > MAX_FILE_BYTES:
        return f"{size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB"
    return None


def iter_tar(path: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Like :func:`iter_zip` for tar archives (compressed or not), read as a stream: the entry
    count and the total size are checked as the headers arrive, so a tar bomb is refused early."""
    try:
        archive = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UploadError(f"{path.name}: not a readable tar archive ({exc})") from None
    with archive:
        count = total = 0
        try:
            for info in archive:
                if info.isdir():
                    continue
                count += 1
                if count > MAX_ENTRIES:
                    raise UploadError(f"{path.name}: more than {MAX_ENTRIES} files in the archive; the limit is {MAX_ENTRIES}")
                if not info.isfile():
                    yield info.name, None, "link or special file inside the archive: ignored"
                    continue
                problem = _entry_problem(info.name, info.size)
                if problem:
                    yield info.name, None, problem
                    continue
                total += info.size
                if total > MAX_TOTAL_BYTES:
                    raise UploadError(f"{path.name}: unpacks to more than {MAX_TOTAL_BYTES / 1e6:.0f} MB; the limit")
                fh = archive.extractfile(info)
                yield info.name, fh.read(info.size + 1) if fh else b"", None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UploadError(f"{path.name}: the tar archive is damaged or truncated ({exc})") from None


def iter_zip(path: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """``(name, bytes, None)`` for each acceptable entry, ``(name, None, reason)`` for each refused one."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UploadError(f"{path.name}: not a valid zip archive") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_ENTRIES:
            raise UploadError(f"{path.name}: {len(infos)} files in the archive; the limit is {MAX_ENTRIES}")
        declared = sum(i.file_size for i in infos)
        if declared > MAX_TOTAL_BYTES:
            raise UploadError(f"{path.name}: unpacks to {declared / 1e6:.0f} MB; the limit is {MAX_TOTAL_BYTES / 1e6:.0f} MB")
        total = 0
        for info in infos:
            name = info.filename
            if stat.S_ISLNK(info.external_attr >> 16):
                yield name, None, "symbolic link inside the archive: ignored"
                continue
            problem = _entry_problem(name, info.file_size)
            if problem:
                yield name, None, problem
                continue
            # Read at most one byte more than declared: a header that lies about the size is caught.
            with archive.open(info) as fh:
                data = fh.read(min(info.file_size, MAX_FILE_BYTES) + 1)
            total += len(data)
            if len(data) > info.file_size or total > MAX_TOTAL_BYTES:
                raise UploadError(f"{path.name}: entries unpack to more than they declare (zip bomb?)")
            yield name, data, None


def iter_inputs(paths: Sequence[str | Path]) -> Iterator[tuple[str, bytes | Path | None, str | None]]:
    """``(name, payload, None)`` per candidate image, ``(name, None, reason)`` per refused file, from
    any mix of image files, folders (recursively) and zip archives. Lazy: thousands of cells never
    sit in memory at once."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                name = str(child.relative_to(path))
                if child.suffix.lower() in IMAGE_SUFFIXES:
                    yield name, child, None
                else:
                    yield name, None, f"not an image file type ({child.suffix or 'no extension'})"
        elif _archive_kind(path.name):
            entries = iter_zip(path) if _archive_kind(path.name) == "zip" else iter_tar(path)
            empty = True
            for name, data, reason in entries:
                empty = False
                yield f"{path.name}/{name}", data, reason
            if empty:
                yield path.name, None, "the archive holds no files (it is empty, or holds only folders)"
        else:
            yield path.name, path, None


def iter_images(paths: Sequence[str | Path]) -> Iterator[tuple[str, Image.Image] | SkippedFile]:
    """Decoded RGB images ``(name, image)``, or a :class:`SkippedFile` saying why a file is left out.
    The single decode path of the app, the count command and its tests."""
    for name, payload, reason in iter_inputs(paths):
        if reason:
            yield SkippedFile(name, reason)
            continue
        try:
            yield name, open_image(payload, name=name)  # type: ignore[arg-type]
        except ImageError as exc:
            yield SkippedFile(name, str(exc).removeprefix(f"{name}: "))
