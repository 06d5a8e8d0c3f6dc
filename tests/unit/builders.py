"""Byte builders for netlink messages, for parser tests."""

from __future__ import annotations

import socket
import struct


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | 0x8000, b"".join(children))


def tcp_info(acked: int, received: int, sent: int, size: int = 232) -> bytes:
    info = bytearray(size)
    struct.pack_into("=QQ", info, 120, acked, received)
    if size >= 208:
        struct.pack_into("=Q", info, 200, sent)
    return bytes(info)


def inet_diag_msg(
    family: int, state: int, src: str, sport: int, dst: str, dport: int,
    inode: int = 77, uid: int = 1000, cookie: int = 5,
) -> bytes:  # fmt: skip
    def packed(address: str) -> bytes:
        raw = socket.inet_pton(family, address)
        return raw + b"\0" * (16 - len(raw))

    return struct.pack(
        "=BBBB2s2s16s16sI8sIIIII", family, state, 0, 0, sport.to_bytes(2, "big"),
        dport.to_bytes(2, "big"), packed(src), packed(dst), 0, cookie.to_bytes(8, "little"),
        0, 0, 0, uid, inode,
    )  # fmt: skip
