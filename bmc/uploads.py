"""Reading many user-supplied images safely: folders, loose files and zip archives.

Zip archives are read in memory entry by entry and never extracted, so a crafted entry name
(``../../etc/passwd``, an absolute path) cannot write anywhere; symlinks, nested archives,
oversize entries, and archives with too many entries or too much uncompressed data (zip bombs)
are refused or listed as skipped, each with the reason.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from PIL import Image

from bmc.data import IMAGE_SUFFIXES, MAX_FILE_BYTES, ImageError, SkippedFile, open_image

MAX_ENTRIES = 5000
"""More entries than this in one upload is refused (a slide's differential is a few hundred cells)."""
MAX_TOTAL_BYTES = 500 * 1024 * 1024
"""Total uncompressed size accepted from one archive."""


class UploadError(ValueError):
    """The upload as a whole is refused (too many entries, zip bomb, not a zip…)."""


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
            pure = PurePosixPath(name.replace("\\", "/"))
            if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
                yield name, None, "unsafe path inside the archive (absolute or '..'): ignored"
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                yield name, None, "symbolic link inside the archive: ignored"
                continue
            suffix = pure.suffix.lower()
            if suffix == ".zip":
                yield name, None, "nested archive: unpack it and upload its images"
                continue
            if suffix not in IMAGE_SUFFIXES:
                yield name, None, f"not an image file type ({suffix or 'no extension'})"
                continue
            if info.file_size > MAX_FILE_BYTES:
                yield name, None, f"{info.file_size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB"
                continue
            # Read at most one byte more than declared: a header that lies about the size is caught.
            with archive.open(info) as fh:
                data = fh.read(min(info.file_size, MAX_FILE_BYTES) + 1)
            total += len(data)
            if len(data) > info.file_size or total > MAX_TOTAL_BYTES:
                raise UploadError(f"{path.name}: entries unpack to more than they declare (zip bomb?)")
            yield name, data, None


def iter_inputs(paths: list[str | Path]) -> Iterator[tuple[str, bytes | Path | None, str | None]]:
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
        elif path.suffix.lower() == ".zip":
            for name, data, reason in iter_zip(path):
                yield f"{path.name}/{name}", data, reason
        else:
            yield path.name, path, None


def iter_images(paths: list[str | Path]) -> Iterator[tuple[str, Image.Image] | SkippedFile]:
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
