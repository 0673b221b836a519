"""Content: what the attachments really are (libmagic), what archives hold, macros, HTML traps."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import magic
from pydantic import Field

with warnings.catch_warnings():
    # oletools still calls pyparsing's pre-3.0 names; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools import olevba

from gateway.archives import ArchiveLimits, inspect_zip, is_zip
from gateway.checks.base import parse_section
from gateway.config import CheckConfig, Settings
from gateway.context import ScanContext
from gateway.message import MimePart
from gateway.services import Services
from gateway.types import Action, Effect, Finding, Status

log = logging.getLogger(__name__)
# olevba logs every oddity of a malformed document at WARNING; our symbols say what matters.
logging.getLogger("olevba").setLevel(logging.CRITICAL)

# True types (libmagic MIME names) that run code when opened.
EXECUTABLE_TYPES = (
    "application/vnd.microsoft.portable-executable",
    "application/x-dosexec",
    "application/x-msdownload",
    "application/x-executable",
    "application/x-pie-executable",
    "application/x-sharedlib",
    "application/x-mach-binary",
    "application/x-msi",
    "application/x-ms-shortcut",
    "application/x-iso9660-image",
    "application/java-archive",
    "text/x-shellscript",
    "text/x-msdos-batch",
)
EXECUTABLE_EXTENSIONS = (
    "exe", "dll", "scr", "com", "pif", "cpl", "msi", "msp", "bat", "cmd", "ps1", "psm1",
    "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "lnk", "iso", "img", "vhd", "vhdx",
    "jar", "reg", "sh", "app", "appx", "msix", "chm", "scf", "url", "xll", "one",
)  # fmt: skip
# What a familiar extension promises; a true type outside the set is a mismatch.
EXPECTED_TYPES: Mapping[str, tuple[str, ...]] = {
    "pdf": ("application/pdf",),
    "zip": ("application/zip",),
    "jpg": ("image/jpeg",),
    "jpeg": ("image/jpeg",),
    "png": ("image/png",),
    "gif": ("image/gif",),
    "txt": ("text/",),
    "csv": ("text/", "application/csv"),
    "htm": ("text/html", "text/xml", "text/plain"),
    "html": ("text/html", "text/xml", "text/plain"),
    "doc": ("application/msword", "application/x-ole-storage", "application/cdfv2"),
    "xls": ("application/vnd.ms-excel", "application/x-ole-storage", "application/cdfv2"),
    "ppt": ("application/vnd.ms-powerpoint", "application/x-ole-storage", "application/cdfv2"),
    "docx": ("application/vnd.openxmlformats-officedocument", "application/zip"),
    "xlsx": ("application/vnd.openxmlformats-officedocument", "application/zip"),
    "pptx": ("application/vnd.openxmlformats-officedocument", "application/zip"),
    "docm": ("application/vnd.openxmlformats-officedocument", "application/vnd.ms-word",
             "application/zip"),
    "xlsm": ("application/vnd.openxmlformats-officedocument", "application/vnd.ms-excel",
             "application/zip"),
}  # fmt: skip
OFFICE_TYPES = (
    "application/msword",
    "application/vnd.ms-",
    "application/x-ole-storage",
    "application/cdfv2",
    "application/vnd.openxmlformats-officedocument",
)
OFFICE_EXTENSIONS = ("doc", "docm", "dot", "dotm", "xls", "xlsm", "xlsb", "ppt", "pptm")
DOCUMENT_EXTENSIONS = frozenset(EXPECTED_TYPES) | {"rtf", "odt", "ods", "mp3", "mp4", "wav"}
# Right-to-left and other invisible formatting characters used to disguise a name.
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HTML_FORM = re.compile(rb"<form\b", re.IGNORECASE)
_HTML_SCRIPT = re.compile(
    rb"<script\b|\bon(?:load|error|click|mouseover)\s*=|javascript:", re.IGNORECASE
)


class ContentConfig(CheckConfig):
    """``[checks.content]``: bounds of the walk and of archives, and banned names and types."""

    max_mime_depth: int = Field(default=20, gt=0)
    max_mime_parts: int = Field(default=500, gt=0)
    max_archive_depth: int = Field(default=3, gt=0)
    max_archive_members: int = Field(default=1000, gt=0)
    max_uncompressed_size: int = Field(default=100 * 1024 * 1024, gt=0)
    max_compression_ratio: float = Field(default=100.0, gt=1)
    max_macro_scan_size: int = Field(default=20 * 1024 * 1024, gt=0)
    executable_extensions: tuple[str, ...] = EXECUTABLE_EXTENSIONS
    executable_types: tuple[str, ...] = EXECUTABLE_TYPES
    banned_extensions: tuple[str, ...] = ()
    banned_types: tuple[str, ...] = ()
    # The least action for what could not be inspected (UNINSPECTABLE): an .exe ten zips
    # deep or a bomb must not be waved through because the walk stopped. "score": no floor.
    uninspectable: Literal["quarantine", "reject", "tempfail", "score"] = "quarantine"


# Symbols meaning part of the message was not inspected: they carry the uninspectable floor.
UNINSPECTABLE = frozenset(
    {
        "MIME_TOO_DEEP",
        "MIME_TOO_MANY_PARTS",
        "ARCHIVE_TOO_DEEP",
        "ARCHIVE_BOMB",
        "ARCHIVE_ENCRYPTED",
    }
)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One attachment or archive member: where it is, its name, declared and true type."""

    where: str
    name: str
    declared: str
    true_type: str

    @property
    def extensions(self) -> list[str]:
        """Lower-cased extensions, last one last ('a.pdf.exe' -> ['pdf', 'exe'])."""
        base = self.name.rsplit("/", 1)[-1].lower().strip().rstrip(". ")
        return [p.strip() for p in base.split(".")[1:] if p.strip()]


@dataclass
class ContentCheck:
    """Finds disguised executables, archive tricks, macros and HTML traps in attachments."""

    name: ClassVar[str] = "content"
    symbols: ClassVar[Mapping[str, str]] = {
        "MIME_TOO_DEEP": "MIME nesting deeper than max_mime_depth (not all of it was inspected)",
        "MIME_TOO_MANY_PARTS": "More MIME parts than max_mime_parts (not all were inspected)",
        "ATTACHMENT_EXECUTABLE": "An attachment or archive member is executable or a script",
        "ATTACHMENT_TYPE_MISMATCH": "The file's true type does not match its extension",
        "ATTACHMENT_DOUBLE_EXTENSION": "A name like invoice.pdf.exe",
        "ATTACHMENT_NAME_SPOOF": "Invisible direction characters in a file name",
        "ATTACHMENT_BANNED": "An extension or type banned by configuration",
        "ARCHIVE_MEMBERS": "Names of archive members (for rules; weighs nothing)",
        "ARCHIVE_ENCRYPTED": "An encrypted archive (its content cannot be inspected)",
        "ARCHIVE_BOMB": "An archive past the size, ratio or member-count limits",
        "ARCHIVE_TOO_DEEP": "Archives nested deeper than max_archive_depth",
        "ARCHIVE_UNREADABLE": "An archive that does not open",
        "OFFICE_MACRO": "An Office document with VBA or XLM macros",
        "HTML_ATTACHMENT_FORM": "An HTML attachment with a form (credential phishing)",
        "HTML_ATTACHMENT_SCRIPT": "An HTML attachment with script",
    }
    config: ContentConfig
    magic: magic.Magic = field(init=False, repr=False)
    lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.magic = magic.Magic(mime=True)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], settings: Settings, services: Services | None = None
    ) -> Self:
        return cls(parse_section(cls.name, ContentConfig, section))

    async def run(self, ctx: ScanContext) -> Sequence[Finding]:
        cfg = self.config
        walk = ctx.message.walk(cfg.max_mime_depth, cfg.max_mime_parts)
        found: list[Finding] = []
        if walk.too_deep:
            found.append(self._hit("MIME_TOO_DEEP", limit=cfg.max_mime_depth))
        if walk.too_many:
            found.append(self._hit("MIME_TOO_MANY_PARTS", limit=cfg.max_mime_parts))
        attachments = [p for p in walk.parts if p.is_attachment]
        if attachments:
            # libmagic, unzip and olevba are CPU work: keep them off the event loop.
            hits, files = await asyncio.to_thread(self._inspect, attachments)
            found.extend(hits)
            ctx.inspected_files.extend(files)
        return found

    def _hit(self, symbol: str, **detail: Any) -> Finding:
        effect = Effect()
        if symbol in UNINSPECTABLE and self.config.uninspectable != "score":
            effect = Effect(least=Action(self.config.uninspectable))
        return Finding(self.name, symbol, Status.FAIL, detail, effect)

    def _true_type(self, data: bytes) -> str:
        if not data:
            return "application/x-empty"
        with self.lock:  # one libmagic cookie is not safe across threads
            return str(self.magic.from_buffer(data[:65536])).lower()

    def _inspect(self, attachments: list[MimePart]) -> tuple[list[Finding], list[dict[str, Any]]]:
        cfg = self.config
        limits = ArchiveLimits(
            max_depth=cfg.max_archive_depth,
            max_members=cfg.max_archive_members,
            max_total_size=cfg.max_uncompressed_size,
            max_ratio=cfg.max_compression_ratio,
        )
        hits: dict[str, list[dict[str, Any]]] = {}
        files: list[dict[str, Any]] = []

        def hit(symbol: str, **detail: Any) -> None:
            hits.setdefault(symbol, []).append(detail)

        for index, part in enumerate(attachments, start=1):
            data = part.payload()
            name = part.filename or f"part-{index}"
            info = FileInfo(name, name, part.content_type, self._true_type(data))
            files.append({"file": name, "declared": info.declared, "true_type": info.true_type})
            self._file(info, data, hit)
            if is_zip(data):
                report = inspect_zip(data, name, limits)
                if report.members:
                    hit(
                        "ARCHIVE_MEMBERS",
                        archive=name,
                        members=[m.path for m in report.members][:50],
                    )
                for member in report.members:
                    if member.data is None:
                        continue
                    inner = FileInfo(member.path, member.name, "", self._true_type(member.head))
                    files.append(
                        {"file": member.path, "true_type": inner.true_type, "in_archive": True}
                    )
                    self._file(inner, member.data, hit)
                for path in report.encrypted:
                    hit("ARCHIVE_ENCRYPTED", member=path)
                for reason in report.bomb:
                    hit("ARCHIVE_BOMB", reason=reason)
                for path in report.too_deep:
                    hit("ARCHIVE_TOO_DEEP", member=path, limit=cfg.max_archive_depth)
                for reason in report.unreadable:
                    hit("ARCHIVE_UNREADABLE", reason=reason)
        # One finding per symbol, listing every file that raised it (bounded).
        findings = [
            self._hit(symbol, files=details[:20], count=len(details))
            for symbol, details in hits.items()
        ]
        return findings, files[:200]

    def _file(self, info: FileInfo, data: bytes, hit: Any) -> None:
        cfg = self.config
        exts = info.extensions
        last = exts[-1] if exts else ""
        where = {"file": info.where, "true_type": info.true_type}
        is_exec_type = info.true_type.startswith(tuple(cfg.executable_types))
        if is_exec_type or last in cfg.executable_extensions:
            hit("ATTACHMENT_EXECUTABLE", **where)
        known = info.true_type not in ("application/octet-stream", "application/x-empty")
        if known and last in EXPECTED_TYPES and not info.true_type.startswith(EXPECTED_TYPES[last]):
            hit("ATTACHMENT_TYPE_MISMATCH", extension=last, **where)
        if len(exts) >= 2 and last in cfg.executable_extensions and exts[-2] in DOCUMENT_EXTENSIONS:
            hit("ATTACHMENT_DOUBLE_EXTENSION", **where)
        if _BIDI.search(info.name):
            hit("ATTACHMENT_NAME_SPOOF", file=ascii(info.name))
        banned_type = cfg.banned_types and info.true_type.startswith(tuple(cfg.banned_types))
        if last in cfg.banned_extensions or banned_type:
            hit("ATTACHMENT_BANNED", **where)
        office = info.true_type.startswith(OFFICE_TYPES) or last in OFFICE_EXTENSIONS
        if office and len(data) <= cfg.max_macro_scan_size and has_macros(info.name, data):
            hit("OFFICE_MACRO", **where)
        if info.true_type == "text/html" or last in ("htm", "html", "shtml", "xhtml"):
            head = data[: 4 * 1024 * 1024]
            if _HTML_FORM.search(head):
                hit("HTML_ATTACHMENT_FORM", file=info.where)
            if _HTML_SCRIPT.search(head):
                hit("HTML_ATTACHMENT_SCRIPT", file=info.where)

    async def aclose(self) -> None:
        return None


def has_macros(name: str, data: bytes) -> bool:
    """VBA or XLM macros in an OLE or OpenXML document, by oletools' olevba."""
    try:
        parser = olevba.VBA_Parser(name or "attachment", data=data)
    except Exception:  # olevba raises many types on files that are not Office documents
        log.debug("olevba could not open %s", name, exc_info=True)
        return False
    try:
        return bool(parser.detect_vba_macros() or parser.detect_xlm_macros())
    except Exception:
        log.debug("olevba failed on %s", name, exc_info=True)
        return False
    finally:
        parser.close()
