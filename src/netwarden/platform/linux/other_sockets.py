"""Raw IP, ICMP "ping" and AF_PACKET sockets as socket records: what malware and
tunnels use, and what sock_diag cannot list here (this kernel has no raw_diag). They
are listed from /proc/net (raw, raw6, icmp, icmp6, packet: addresses, protocol,
interface, owner's uid, inode) and counted by netwarden's BPF programs (the C module's
OtherSockets: bytes each way at the socket layer, what the program wrote and read, and
the process that first used the socket). A socket that closed between two looks is
reported once more with its final counts, then forgotten.

They have no ports: a record's local port holds the IP protocol (a ping socket's echo
id; a packet socket's EtherType), its remote port the socket's inode (see Transport)."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace

from netwarden.model import Endpoint, Transport
from netwarden.model.observations import SocketRecord
from netwarden.platform.linux import netns as netns_api
from netwarden.platform.linux.procfs import bpf_pids_are_ours

try:
    from netwarden.platform.linux import _native
except ImportError:  # built without a compiler
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SOURCES = ("raw", "raw6", "icmp", "icmp6", "packet")
ANY = {4: "0.0.0.0", 6: "::"}
PACKET_ANY = "*"  # a packet socket bound to no interface
ICMP, ICMPV6 = 1, 58


def _address(hex_text: str) -> str:
    """/proc/net's address: 8 or 32 hex digits, each 32-bit word in host order."""
    raw = bytes.fromhex(hex_text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    text = socket.inet_ntop(socket.AF_INET6, words)
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def inet_transport(version: int, protocol: int) -> Transport:
    if protocol == ICMP and version == 4:
        return Transport.ICMP
    if protocol == ICMPV6 and version == 6:
        return Transport.ICMP6
    return Transport.RAW


def parse_inet(text: str, source: str) -> list[SocketRecord]:
    """Lines of /proc/net/raw[6] or icmp[6] (ping sockets: the port is the echo id)."""
    version = 6 if source.endswith("6") else 4
    records = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            local, port = fields[1].split(":")
            remote, _remote_port = fields[2].split(":")
            uid, inode = int(fields[7]), int(fields[9])
            number = int(port, 16)
            local_address, remote_address = _address(local), _address(remote)
        except ValueError:
            continue
        if source.startswith("icmp"):
            transport = Transport.ICMP if version == 4 else Transport.ICMP6
        else:
            transport = inet_transport(version, number)
        connected = remote_address not in ("0.0.0.0", "::")
        records.append(
            SocketRecord(
                transport,
                Endpoint(local_address, number),
                Endpoint(remote_address, inode),
                "ESTABLISHED" if connected else "UNCONN",
                inode,
                uid,
                0,
            )
        )
    return records


def parse_packet(text: str) -> list[SocketRecord]:
    """Lines of /proc/net/packet: sk RefCnt Type Proto Iface R Rmem User Inode."""
    records = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 9:
            continue
        try:
            ether_type, index = int(fields[3], 16), int(fields[4])
            uid, inode = int(fields[7]), int(fields[8])
        except ValueError:
            continue
        records.append(
            SocketRecord(
                Transport.PACKET,
                Endpoint(interface_name(index), ether_type),
                Endpoint(PACKET_ANY, inode),
                "UNCONN",
                inode,
                uid,
                0,
            )
        )
    return records


def interface_name(index: int) -> str:
    if not index:
        return PACKET_ANY
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"


def counted_record(
    inode: int, family: int, kind: int, protocol: int, uid: int
) -> SocketRecord | None:
    """A socket the programs counted but /proc never listed (it lived between two looks):
    what the programs know of it."""
    if family == socket.AF_PACKET:
        return SocketRecord(
            Transport.PACKET,
            Endpoint(PACKET_ANY, socket.ntohs(protocol)),
            Endpoint(PACKET_ANY, inode),
            "UNCONN",
            inode,
            uid,
            0,
        )
    version = 4 if family == socket.AF_INET else 6
    if kind == socket.SOCK_DGRAM:  # a ping socket
        transport = Transport.ICMP if version == 4 else Transport.ICMP6
    else:
        transport = inet_transport(version, protocol)
    return SocketRecord(
        transport,
        Endpoint(ANY[version], protocol),
        Endpoint(ANY[version], inode),
        "UNCONN",
        inode,
        uid,
        0,
    )


class OtherSocketTable:
    """Opened in the namespace it lists (its /proc/net is the namespace's)."""

    def __init__(self, netns: str | None) -> None:
        if _native is None or not hasattr(_native, "OtherSockets"):
            raise OSError("netwarden's C module is not built")
        self._counters = _native.OtherSockets(netns_api.inode_of(netns))
        self._netns = netns
        self._last: dict[int, SocketRecord] = {}  # inode -> record of each listed last time
        self._reported_gone: set[int] = set()
        # Sockets open before the programs were attached: counted from then.
        self._started = time.time()
        self._before: set[int] | None = None

    def _listed(self) -> dict[int, SocketRecord]:
        """/proc/net as the namespace has it: the files are looked up in the reading
        thread's namespace at each open."""
        listed: dict[int, SocketRecord] = {}
        with netns_api.entered(self._netns):  # (interface names are the namespace's too)
            for source in SOURCES:
                try:
                    with open(f"/proc/thread-self/net/{source}", encoding="ascii") as lines:
                        text = lines.read()
                except FileNotFoundError:
                    continue  # IPv6 off, or no packet sockets here
                found = parse_packet(text) if source == "packet" else parse_inet(text, source)
                listed.update((record.inode, record) for record in found)
        return listed

    def records(self) -> list[SocketRecord]:
        """Every raw, ping and packet socket, with its counts; those gone since the last
        look once more, with their final counts."""
        self._counters.forget(self._reported_gone)
        self._reported_gone = set()
        listed = self._listed()
        last, self._last = self._last, {}
        if self._before is None:
            self._before = set(listed)
        records = []
        for (
            inode,
            pid,
            uid,
            _name,
            family,
            kind,
            protocol,
            sent,
            received,
            _f,
            _l,
        ) in self._counters.read():
            record = listed.pop(inode, None)
            if record is None:  # gone: its final counts, once
                record = last.get(inode) or counted_record(inode, family, kind, protocol, uid)
                self._reported_gone.add(inode)
                if record is None:
                    continue
                record = replace(record, destroyed=True)
            else:
                self._last[inode] = record
            records.append(
                replace(
                    record,
                    bytes_sent=sent,
                    bytes_received=received,
                    pid=pid,
                    counted_since=self._since(inode),
                )
            )
        for inode, record in listed.items():  # no byte moved yet
            record = replace(record, counted_since=self._since(inode))
            self._last[inode] = record
            records.append(record)
        return records

    def peer_fin(self, cookie: int) -> bool | None:
        """Whether the TCP socket with this cookie had its peer's FIN as it closed."""
        return self._counters.peer_fin(cookie)

    def _since(self, inode: int) -> float | None:
        return self._started if self._before is not None and inode in self._before else None

    def close(self) -> None:
        self._counters.close()


def open_other_sockets(netns: str | None) -> OtherSocketTable | None:
    if not bpf_pids_are_ours():  # the counters' processes would be other pids' here
        log.info("raw and packet sockets unavailable: netwarden runs in a pid namespace of its own")
        return None
    try:
        return OtherSocketTable(netns)
    except OSError as exc:
        log.info("raw and packet sockets unavailable (%s)", exc)
        return None
