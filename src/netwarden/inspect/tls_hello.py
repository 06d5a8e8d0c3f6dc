"""The TLS ClientHello: parsed from the first bytes a client sends, with the JA3 and
JA4 fingerprints of the client that sent it.

A ClientHello may span several TLS records; `ClientHelloReader` collects handshake
bytes across records until the message is whole, refusing anything that is not a
ClientHello or that grows past `MAX_HELLO` bytes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

HANDSHAKE, CLIENT_HELLO = 22, 1
MAX_HELLO = 64 * 1024
SERVER_NAME, SUPPORTED_GROUPS, EC_POINT_FORMATS = 0x0000, 0x000A, 0x000B
SIGNATURE_ALGORITHMS, ALPN, SUPPORTED_VERSIONS = 0x000D, 0x0010, 0x002B

VERSION_NAMES = {
    0x0304: "TLS 1.3",
    0x0303: "TLS 1.2",
    0x0302: "TLS 1.1",
    0x0301: "TLS 1.0",
    0x0300: "SSL 3.0",
    0x0002: "SSL 2.0",
}
JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


class NotClientHello(ValueError):
    """The bytes are not (or no longer) a well-formed TLS ClientHello."""


def is_grease(value: int) -> bool:
    """GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa; fingerprints ignore them."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise NotClientHello("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _u16_list(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise NotClientHello("odd length in a list of 16-bit values")
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]  # in the order sent
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    supported_versions: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()

    @property
    def version(self) -> int:
        """The highest version the client offers (TLS 1.3 hides in supported_versions)."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.legacy_version

    @property
    def version_name(self) -> str:
        return VERSION_NAMES.get(self.version, f"0x{self.version:04x}")

    @property
    def alpn_names(self) -> tuple[str, ...]:
        return tuple(p.decode("ascii", "replace") for p in self.alpn)

    def ja3_text(self) -> str:
        return _ja3_text(
            self.legacy_version,
            self.cipher_suites,
            self.extensions,
            self.groups,
            self.point_formats,
        )

    def ja3(self) -> str:
        return hashlib.md5(self.ja3_text().encode(), usedforsecurity=False).hexdigest()

    def ja4(self) -> str:
        return _ja4(
            self.version,
            self.server_name is not None,
            self.cipher_suites,
            self.extensions,
            self.alpn[0] if self.alpn else b"",
            self.signature_algorithms,
        )


# A client sends the same lists in every hello: fingerprints are computed once for them.
@functools.lru_cache(maxsize=1024)
def _ja3_text(
    legacy_version: int,
    ciphers: tuple[int, ...],
    extensions: tuple[int, ...],
    groups: tuple[int, ...],
    point_formats: tuple[int, ...],
) -> str:
    def joined(values: tuple[int, ...]) -> str:
        return "-".join(str(v) for v in values if not is_grease(v))

    lists = (ciphers, extensions, groups, point_formats)
    return ",".join((str(legacy_version), *map(joined, lists)))


@functools.lru_cache(maxsize=1024)
def _ja4(
    version: int,
    named: bool,
    cipher_suites: tuple[int, ...],
    all_extensions: tuple[int, ...],
    first_alpn: bytes,
    signature_algorithms: tuple[int, ...],
) -> str:
    ciphers = [c for c in cipher_suites if not is_grease(c)]
    extensions = [e for e in all_extensions if not is_grease(e)]
    prefix = "t{}{}{:02d}{:02d}{}".format(
        JA4_VERSIONS.get(version, "00"),
        "d" if named else "i",
        min(len(ciphers), 99),
        min(len(extensions), 99),
        _ja4_alpn(first_alpn),
    )
    cipher_hash = _ja4_hash(",".join(f"{c:04x}" for c in sorted(ciphers)))
    hashed = ",".join(f"{e:04x}" for e in sorted(extensions) if e not in (SERVER_NAME, ALPN))
    algorithms = [a for a in signature_algorithms if not is_grease(a)]
    if hashed and algorithms:
        hashed += "_" + ",".join(f"{a:04x}" for a in algorithms)
    return f"{prefix}_{cipher_hash}_{_ja4_hash(hashed)}"


def _ja4_alpn(value: bytes) -> str:
    if not value:
        return "00"
    first, last = value[0], value[-1]
    if (
        chr(first).isascii()
        and chr(first).isalnum()
        and chr(last).isascii()
        and (chr(last).isalnum())
    ):
        return chr(first) + chr(last)
    return f"{first:02x}"[0] + f"{last:02x}"[-1]


def _ja4_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def parse_client_hello(body: bytes) -> ClientHello:
    """The ClientHello in a handshake message body (after its 4-byte header)."""
    reader = _Reader(body)
    legacy_version = reader.u16()
    reader.take(32)  # random
    reader.vector(1)  # session id
    ciphers = _u16_list(reader.vector(2))
    reader.vector(1)  # compression methods
    fields: dict[str, object] = {}
    extensions: list[int] = []
    if not reader.done():
        block = _Reader(reader.vector(2))
        while not block.done():
            kind = block.u16()
            extensions.append(kind)
            _read_extension(kind, block.vector(2), fields)
    return ClientHello(legacy_version, ciphers, tuple(extensions), **fields)  # type: ignore[arg-type]


def _read_extension(kind: int, data: bytes, fields: dict[str, object]) -> None:
    reader = _Reader(data)
    if kind == SERVER_NAME and data:
        names = _Reader(reader.vector(2))
        while not names.done():
            name_type, name = names.u8(), names.vector(2)
            if name_type == 0:
                fields["server_name"] = name.decode("ascii", "replace").lower().rstrip(".")
    elif kind == ALPN:
        protocols = _Reader(reader.vector(2))
        alpn = []
        while not protocols.done():
            alpn.append(protocols.vector(1))
        fields["alpn"] = tuple(alpn)
    elif kind == SUPPORTED_VERSIONS:
        fields["supported_versions"] = _u16_list(reader.vector(1))
    elif kind == SUPPORTED_GROUPS:
        fields["groups"] = _u16_list(reader.vector(2))
    elif kind == EC_POINT_FORMATS:
        fields["point_formats"] = tuple(reader.vector(1))
    elif kind == SIGNATURE_ALGORITHMS:
        fields["signature_algorithms"] = _u16_list(reader.vector(2))


class ClientHelloReader:
    """Feed the client's first bytes; `hello` is set once the ClientHello is whole.
    Raises NotClientHello as soon as the bytes cannot be one."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._handshake = bytearray()
        self.hello: ClientHello | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        if self.hello is not None:
            return self.hello
        self._buffer += data
        while len(self._buffer) >= 5:
            kind, length = self._buffer[0], int.from_bytes(self._buffer[3:5], "big")
            if kind != HANDSHAKE or self._buffer[1] != 3:
                raise NotClientHello("not a TLS handshake record")
            if length == 0 or length > 16384 + 2048:
                raise NotClientHello(f"TLS record of {length} bytes")
            if len(self._buffer) < 5 + length:
                break
            self._handshake += self._buffer[5 : 5 + length]
            del self._buffer[: 5 + length]
            if self._handshake[0] != CLIENT_HELLO:
                raise NotClientHello("the first handshake message is not a ClientHello")
            if len(self._handshake) >= 4:
                size = int.from_bytes(self._handshake[1:4], "big")
                if size > MAX_HELLO:
                    raise NotClientHello(f"a ClientHello of {size} bytes")
                if len(self._handshake) >= 4 + size:
                    self.hello = parse_client_hello(bytes(self._handshake[4 : 4 + size]))
                    return self.hello
        return None
