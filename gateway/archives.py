"""Look inside zip archives without trusting them: bounded depth, size, ratio and count."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Decompression-bomb limits for one attachment, nested archives included."""

    max_depth: int = 3
    max_members: int = 1000
    max_total_size: int = 100 * 1024 * 1024
    max_ratio: float = 100.0
    max_member_read: int = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Member:
    """A file inside an archive: its path (``outer.zip/inner.zip/a.exe``) and first bytes."""

    path: str
    name: str
    size: int
    head: bytes
    data: bytes | None


@dataclass(slots=True)
class ArchiveReport:
    """What an archive holds and which limits it hit."""

    members: list[Member] = field(default_factory=list)
    encrypted: list[str] = field(default_factory=list)
    bomb: list[str] = field(default_factory=list)
    too_deep: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


# The end-of-central-directory record sits in the last 22 bytes plus a comment of <= 64 KiB.
_EOCD_WINDOW = 22 + 65535


def is_zip(data: bytes) -> bool:
    """A zip at the start, or one appended to something else (a PDF/ZIP polyglot, a
    self-extractor): readers find a zip by its end record, so the inspection must too."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return True
    return b"PK\x05\x06" in data[-_EOCD_WINDOW:] and zipfile.is_zipfile(io.BytesIO(data))


def inspect_zip(data: bytes, name: str, limits: ArchiveLimits) -> ArchiveReport:
    """List members of a zip and of zips inside it, never inflating past the limits."""
    report = ArchiveReport()
    budget = [limits.max_total_size]
    _walk(data, name, 1, limits, report, budget)
    return report


def _walk(
    data: bytes,
    path: str,
    depth: int,
    limits: ArchiveLimits,
    report: ArchiveReport,
    budget: list[int],
) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        report.unreadable.append(f"{path}: {exc}"[:200])
        return
    # Declared sizes first: cheap, and enough to refuse most bombs without inflating a byte.
    declared = sum(i.file_size for i in infos)
    compressed = max(sum(i.compress_size for i in infos), 1)
    if len(infos) > limits.max_members:
        report.bomb.append(f"{path}: {len(infos)} members > {limits.max_members}")
        infos = infos[: limits.max_members]
    if declared > limits.max_total_size:
        report.bomb.append(f"{path}: {declared} bytes uncompressed > {limits.max_total_size}")
    if declared / compressed > limits.max_ratio:
        report.bomb.append(f"{path}: ratio {declared / compressed:.0f} > {limits.max_ratio:g}")
    if report.bomb:
        report.members.extend(_names_only(infos, path))
        return
    for info in infos:
        if info.is_dir():
            continue
        member_path = f"{path}/{info.filename}"
        if info.flag_bits & 0x1:
            report.encrypted.append(member_path)
            report.members.append(Member(member_path, info.filename, info.file_size, b"", None))
            continue
        limit = min(limits.max_member_read, budget[0])
        try:
            with archive.open(info) as handle:
                content = handle.read(limit + 1)
        except (zipfile.BadZipFile, RuntimeError, ValueError, OSError, EOFError) as exc:
            report.unreadable.append(f"{member_path}: {exc}"[:200])
            continue
        if len(content) > limit:
            # The member inflates past what it declared or what is left of the budget.
            report.bomb.append(f"{member_path}: inflates past {limit} bytes")
            return
        budget[0] -= len(content)
        report.members.append(
            Member(member_path, info.filename, len(content), content[:4096], content)
        )
        if is_zip(content):
            if depth >= limits.max_depth:
                report.too_deep.append(member_path)
            else:
                _walk(content, member_path, depth + 1, limits, report, budget)


def _names_only(infos: list[zipfile.ZipInfo], path: str) -> Iterator[Member]:
    for info in infos[:100]:
        yield Member(f"{path}/{info.filename}", info.filename, info.file_size, b"", None)
