"""Where a bundle's files come from: a folder on disk, or bytes an app already holds (a mapping
of file names to bytes, or one zip archive: Android/iOS assets, a download, a database row).

Every name is checked the same way for both: a plain relative path that cannot leave the
bundle. Hashes are checked by the manifest reader (manifest.read_verified), not here.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import BundleError

MAX_ZIP_BYTES = 1 << 30  # uncompressed: a bundle is megabytes; refuse archives that expand past
MANIFEST = "manifest.json"


def check_name(where: str, name: str) -> str:
    """`name` if it is a plain relative path inside the bundle, else BundleError."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or "\\" in name or ".." in pure.parts:
        raise BundleError(
            f"{where}: path {name!r} leaves the bundle folder; a manifest may only name files "
            "inside it"
        )
    return name


class BundleFiles:
    """The files of one bundle, by the names manifest.json uses."""

    where: str  # how messages name the bundle

    def check(self, name: str) -> None:
        """BundleError unless `name` is a path inside the bundle."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def path(self, name: str) -> Path | None:
        """A file on disk onnxruntime may map itself, or None (bytes only)."""
        return None


@dataclass(frozen=True)
class Folder(BundleFiles):
    root: Path

    @property
    def where(self) -> str:  # type: ignore[override]
        return str(self.root)

    def resolve(self, name: str) -> Path:
        """`root/name`, refused unless it stays in `root` (a symlink out is refused too)."""
        check_name(str(self.root / MANIFEST), name)
        target = (self.root / name).resolve()
        if not target.is_relative_to(self.root.resolve()):
            where = self.root / MANIFEST
            raise BundleError(f"{where}: {name!r} resolves outside the bundle folder")
        return target

    def check(self, name: str) -> None:
        self.resolve(name)

    def read(self, name: str) -> bytes:
        try:
            return self.resolve(name).read_bytes()
        except OSError as e:
            raise BundleError(f"{name}: cannot read ({e.strerror})") from e

    def has(self, name: str) -> bool:
        return self.resolve(name).is_file()

    def path(self, name: str) -> Path | None:
        return self.resolve(name)


@dataclass(frozen=True)
class Memory(BundleFiles):
    """Files as bytes. An app may leave optional files (the fallback model) out."""

    files: Mapping[str, bytes] = field(repr=False)
    where: str = "<bundle in memory>"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name, data in self.files.items():
            if not isinstance(name, str) or not isinstance(data, bytes | bytearray | memoryview):
                raise BundleError(
                    f"{self.where}: files must map names (str) to bytes; {name!r} maps to "
                    f"{type(data).__name__}"
                )
            check_name(self.where, name)

    def check(self, name: str) -> None:
        check_name(self.where, name)

    def read(self, name: str) -> bytes:
        check_name(self.where, name)
        if name not in self.files:
            raise BundleError(f"{self.where}: {name} is not among the files given")
        return bytes(self.files[name])

    def has(self, name: str) -> bool:
        return check_name(self.where, name) in self.files


def from_zip(data: bytes, where: str = "<zip archive>") -> Memory:
    """A bundle zipped flat or inside one folder (`zip -r low.zip low/` works as well as
    zipping the folder's contents); directories and anything over MAX_ZIP_BYTES are refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise BundleError(f"{where}: not a zip archive ({e})") from e
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            raise BundleError(f"{where}: expands to {total} bytes, over {MAX_ZIP_BYTES}")
        prefix = _common_folder(where, [i.filename for i in infos])
        try:
            files = {i.filename[len(prefix) :]: archive.read(i) for i in infos}
        except (zipfile.BadZipFile, OSError, ValueError) as e:  # CRC errors, truncated members
            raise BundleError(f"{where}: unreadable member ({e})") from e
    return Memory(files, where)


def _common_folder(where: str, names: list[str]) -> str:
    """'' when manifest.json is at the top, 'low/' when every file is inside low/."""
    if MANIFEST in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
        return f"{next(iter(tops))}/"
    raise BundleError(f"{where}: no {MANIFEST} at the top of the archive or in one folder")
