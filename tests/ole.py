"""A minimal Compound File Binary (OLE2) writer, so tests can make macro documents themselves.

Only what a test document needs: version 3, 512-byte sectors, one FAT sector, streams padded
to 4096 bytes (so no mini stream), siblings chained to the right in name order.
"""

from __future__ import annotations

import struct

SECTOR = 512
FREESECT, ENDOFCHAIN, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def _order(name: str) -> tuple[int, str]:
    return len(name), name.upper()  # CFB compares names by length, then case-insensitively


def make_ole(streams: dict[str, bytes]) -> bytes:
    """An OLE file holding ``streams`` (paths like 'VBA/dir'; storages are made as needed)."""
    tree: dict[str, dict] = {}
    for path, data in streams.items():
        node = tree
        *storages, leaf = path.split("/")
        for name in storages:
            node = node.setdefault(name, {})
        node[leaf] = data.ljust(4096, b"\0")

    entries: list[dict] = [{"name": "Root Entry", "type": 5, "node": tree}]
    queue = [0]
    while queue:  # assign directory ids breadth-first
        parent = entries[queue.pop(0)]
        names = sorted(parent["node"], key=_order) if isinstance(parent["node"], dict) else []
        ids = []
        for name in names:
            value = parent["node"][name]
            entries.append(
                {"name": name, "type": 1 if isinstance(value, dict) else 2, "node": value}
            )
            ids.append(len(entries) - 1)
            if isinstance(value, dict):
                queue.append(len(entries) - 1)
        parent["child"] = ids[0] if ids else NOSTREAM
        for left, right in zip(ids, [*ids[1:], NOSTREAM], strict=True):
            entries[left]["right"] = right

    dir_sectors = (len(entries) + 3) // 4
    fat = [FATSECT] + [0] * dir_sectors
    for i in range(dir_sectors):
        fat[1 + i] = 2 + i if i < dir_sectors - 1 else ENDOFCHAIN
    data_sectors = b""
    for entry in entries:
        if entry["type"] != 2:
            entry["start"], entry["size"] = ENDOFCHAIN, 0
            continue
        blob: bytes = entry["node"]
        count = len(blob) // SECTOR
        first = len(fat)
        fat.extend(first + k + 1 if k < count - 1 else ENDOFCHAIN for k in range(count))
        entry["start"], entry["size"] = first, len(blob)
        data_sectors += blob
    if len(fat) > SECTOR // 4:
        raise ValueError("test document too big for one FAT sector")
    fat_sector = struct.pack(f"<{SECTOR // 4}I", *(fat + [FREESECT] * (SECTOR // 4 - len(fat))))

    directory = b""
    for entry in entries:
        name = entry["name"].encode("utf-16-le") + b"\0\0"
        directory += struct.pack(
            "<64sHBBIII16sIQQIQ",
            name,
            len(name),
            entry["type"],
            1,
            NOSTREAM,
            entry.get("right", NOSTREAM),
            entry.get("child", NOSTREAM),
            b"\0" * 16,
            0,
            0,
            0,
            entry["start"],
            entry["size"],
        )
    empty = struct.pack("<64sHBBIII16sIQQIQ", b"", 0, 0, 0, NOSTREAM, NOSTREAM, NOSTREAM,
                        b"\0" * 16, 0, 0, 0, 0, 0)  # fmt: skip
    directory += empty * (dir_sectors * 4 - len(entries))

    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        b"\0" * 16,
        0x3E,
        3,
        0xFFFE,
        9,
        6,
        b"\0" * 6,
        0,
        1,
        1,
        0,
        4096,
        ENDOFCHAIN,
        0,
        ENDOFCHAIN,
        0,
    )
    header += struct.pack("<109I", 0, *([FREESECT] * 108))
    return header + fat_sector + directory + data_sectors


def macro_doc() -> bytes:
    """A Word 97 document whose VBA project olevba recognises."""
    return make_ole({
        "WordDocument": b"\xec\xa5" + b"\0" * 100,
        "Macros/PROJECT": b'ID="{00000000-0000-0000-0000-000000000000}"\r\nModule=ThisDocument\r\n',
        "Macros/VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",
        "Macros/VBA/dir": b"\x01" + b"\0" * 50,
    })  # fmt: skip


def plain_doc() -> bytes:
    """A Word 97 document without macros."""
    return make_ole({"WordDocument": b"\xec\xa5" + b"\0" * 100, "1Table": b"\0" * 10})
