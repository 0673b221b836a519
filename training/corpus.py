"""Read messages from corpora: files, directories, Maildirs, mbox files and tar archives."""

from __future__ import annotations

import mailbox
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path


def strip_mbox_line(data: bytes) -> bytes:
    """Drop the leading mbox 'From ' separator line that many corpus files keep."""
    return data.partition(b"\n")[2] if data.startswith(b"From ") else data


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(5)
        if head != b"From ":
            return False
        # A single message file also starts with 'From ': an mbox holds a second one.
        return b"\nFrom " in handle.read(1 << 20)


def iter_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(source id, raw bytes) for every message under ``path``.

    The source id is the path relative to the corpus root (with forward slashes) for
    directories and archives, so the SpamAssassin fixed split can be computed from it.
    """
    name = path.name.lower()
    if path.is_file() and (name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))):
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    relative = member.name.split("/", 1)[1] if "/" in member.name else member.name
                    yield relative, strip_mbox_line(handle.read())
    elif path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        box = mailbox.Maildir(path, create=False)
        for key in sorted(box.keys()):
            yield f"{path.name}/{key}", bytes(box.get_bytes(key))
    elif path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for file in sorted(files):
                full = Path(root) / file
                relative = full.relative_to(path).as_posix()
                yield relative, strip_mbox_line(full.read_bytes())
    elif path.is_file() and _is_mbox(path):
        mbox = mailbox.mbox(path, create=False)
        try:
            for number, key in enumerate(mbox.keys(), start=1):
                yield f"{path.name}#{number}", mbox.get_bytes(key)
        finally:
            mbox.close()
    elif path.is_file():
        yield path.name, strip_mbox_line(path.read_bytes())
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")


def label_from_path(source: str) -> str | None:
    """'spam' or 'ham' from a path component such as spam-2/ or easy-ham-1/, else None."""
    for part in source.lower().split("/")[:-1]:
        if part.startswith("spam") or part.endswith("spam"):
            return "spam"
        if "ham" in part:
            return "ham"
    return None
