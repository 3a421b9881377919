"""Read-only access to dataset files in folders or tar archives of them.

:class:`FileStore` is one root: a folder, or a tar of it (any compression ``tarfile`` reads),
opened lazily once per process (DataLoader or pool workers each open their own handle; a store
pickles without its handle). Paths are relative to the root and ``/``-separated:

* ``exists(rel)`` / ``read(rel)`` (bytes; ``FileNotFoundError`` naming the file and the
  expected layout) / ``describe(rel)`` (the path as a user finds it, ``archive.tar:rel``);
* ``names()``: every file, sorted; ``prefix``: the single top-level folder of an archive made
  with ``tar -C parent -cf x.tar root`` (looked through by ``exists``/``read``/``find``);
* ``find(names, anywhere=False)``: several names looked up at once, ``{name: rel}``; with
  ``anywhere`` an archive member also matches when its name ends with ``"/" + name``;
* ``member_span(rel)``: where an archive member's bytes are in the file, ``(offset, size)``.

:func:`locate` looks names up over several roots in order (the first root holding a name
wins) and gives ``{name: (store, rel)}``, so that ``store.read(rel)`` reads it.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class FileStore:
    """Read-only access to the files of a dataset root: a folder or a tar archive of it.

    The archive is opened lazily, once per process: DataLoader workers each open their own
    handle (a handle inherited over ``fork`` would share one file offset between processes).

    Args:
        root: folder, or tar file (any compression ``tarfile`` reads; plain tar is fastest).
        layout: description of the expected layout, quoted in errors.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is a file but not a tar archive.
    """

    def __init__(self, root: str | os.PathLike, layout: str = "") -> None:
        # Set first: __del__ runs even when a check below raises.
        self._tar: tarfile.TarFile | None = None
        self.root = Path(root).expanduser()
        self.layout = layout
        if not self.root.exists():
            raise FileNotFoundError(
                f"dataset root {self.root} does not exist; expected a folder or a .tar of it"
                + (f" holding {layout}" if layout else "")
            )
        self.is_tar = self.root.is_file()
        if self.is_tar and not tarfile.is_tarfile(self.root):
            raise ValueError(f"dataset root {self.root} is a file but not a tar archive")
        self._members: dict[str, tarfile.TarInfo] = {}
        self._prefix = ""
        self._pid: int | None = None

    def _archive(self) -> tarfile.TarFile:
        if self._tar is None or self._pid != os.getpid():
            # A handle inherited over fork shares its offset with the parent: drop this copy.
            self.close()
            self._tar = tarfile.open(self.root)
            self._pid = os.getpid()
            self._members = {
                _normalise_member(m.name): m for m in self._tar.getmembers() if m.isfile()
            }
            # `tar -C parent -cf x.tar root` puts every file under one folder: look through it.
            tops = {name.split("/", 1)[0] for name in self._members}
            only_nested = all("/" in name for name in self._members)
            self._prefix = f"{tops.pop()}/" if len(tops) == 1 and only_nested else ""
        return self._tar

    def _missing(self, rel: str) -> FileNotFoundError:
        where = (
            f"{rel!r} not found in archive {self.root}"
            if self.is_tar
            else f"{self.root / rel} not found"
        )
        return FileNotFoundError(
            where + (f"; expected layout: {self.layout}" if self.layout else "")
        )

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` (a path relative to the root, ``/``-separated) is a file."""
        if not self.is_tar:
            return (self.root / rel).is_file()
        self._archive()
        return rel in self._members or self._prefix + rel in self._members

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``.

        Raises:
            FileNotFoundError: naming the missing path (and the archive) and the layout.
        """
        if not self.is_tar:
            path = self.root / rel
            if not path.is_file():
                raise self._missing(rel)
            return path.read_bytes()
        tar = self._archive()
        member = self._members.get(rel) or self._members.get(self._prefix + rel)
        if member is None:
            raise self._missing(rel)
        handle = tar.extractfile(member)
        if handle is None:
            raise self._missing(rel)
        return handle.read()

    @property
    def prefix(self) -> str:
        """``"<folder>/"`` if every archive member lies in one top-level folder, else ``""``.

        Paths are looked up as given first, then under this folder, so both ``tar -C root .``
        and ``tar -C parent root`` archives of a root work.
        """
        if not self.is_tar:
            return ""
        self._archive()
        return self._prefix

    def names(self) -> list[str]:
        """All file paths relative to the root (archive members as stored, without ``./``)."""
        if not self.is_tar:
            return sorted(
                p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
            )
        self._archive()
        return sorted(self._members)

    def find(self, names: Iterable[str], anywhere: bool = False) -> dict[str, str]:
        """Look several names up at once: ``{name: rel}`` for the names this root has, where
        ``rel`` is what :meth:`read` takes; names it does not have are absent.

        A folder has ``name`` if ``root/name`` is a file. An archive has it if a member is
        ``name`` or ``<prefix>name`` (as :meth:`exists`), or, with ``anywhere``, if a member's
        name ends with ``"/" + name`` (any leading folders). With ``anywhere`` members are
        taken in archive order, each serves the longest of ``names`` it ends with, and the
        first member serving a name wins.
        """
        wanted = set(names)
        if not self.is_tar:
            return {name: name for name in sorted(wanted) if (self.root / name).is_file()}
        self._archive()
        found: dict[str, str] = {}
        if not anywhere:
            for name in sorted(wanted):
                for rel in (name, self._prefix + name):
                    if rel in self._members:
                        found[name] = rel
                        break
            return found
        for member in self._members:
            parts = member.split("/")
            for start in range(len(parts)):
                suffix = "/".join(parts[start:])
                if suffix in wanted and suffix not in found:
                    found[suffix] = member
                    break
        return found

    def member_span(self, rel: str) -> tuple[int, int]:
        """``(offset, size)`` of archive member ``rel``'s bytes in the archive file. In an
        uncompressed tar they can be read with one seek and one read, without a tar handle
        (the training-set converters' worker processes read inputs so).

        Raises:
            FileNotFoundError: the root is a folder, or ``rel`` is not a member.
        """
        if not self.is_tar:
            raise self._missing(rel)
        self._archive()
        member = self._members.get(rel) or self._members.get(self._prefix + rel)
        if member is None:
            raise self._missing(rel)
        return member.offset_data, member.size

    def describe(self, rel: str) -> str:
        """``rel`` as a user finds it: the file path, or ``archive.tar:rel``."""
        return f"{self.root}:{rel}" if self.is_tar else str(self.root / rel)

    def __getstate__(self) -> dict[str, Any]:
        # Open archives do not pickle; each process reopens its own.
        state = self.__dict__.copy()
        state.update(_tar=None, _members={}, _pid=None)
        return state

    def close(self) -> None:
        """Close the archive handle, if any (reopened on the next read)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __del__(self) -> None:
        self.close()


def _normalise_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def locate(
    stores: Sequence[FileStore], names: Iterable[str], anywhere: bool = False
) -> dict[str, tuple[FileStore, str]]:
    """Look ``names`` up over several roots in order: ``{name: (store, rel)}``, from the first
    store that has each name (:meth:`FileStore.find`, same ``anywhere``); names found nowhere
    are absent. ``store.read(rel)`` reads a found file."""
    pending = set(names)
    found: dict[str, tuple[FileStore, str]] = {}
    for store in stores:
        if not pending:
            break
        for name, rel in store.find(pending, anywhere).items():
            found[name] = (store, rel)
        pending.difference_update(found)
    return found
