"""The CONNECT layer on Linux: the first packet of each new TCP or UDP connection,
outgoing and incoming, is queued (NFQUEUE) for a verdict, with the process that owns
its socket.

Queueing uses the iptables-nft NFQUEUE target in a chain netwarden owns in the
mangle table (NETWARDEN-CONNECT, jumped to from OUTPUT and INPUT). Connections whose
conntrack mark already carries a verdict, and those of netwarden's proxy, are not
queued. With fail-open the rule has --queue-bypass and the queue accepts when full,
so traffic flows while no daemon listens; with fail-closed it waits for one.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess

from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo
from netwarden.model.connect import ConnectDirection, ConnectRequest
from netwarden.platform.base import PlatformError
from netwarden.platform.linux import nftables
from netwarden.platform.linux.nfqueue import COPY_BYTES, NfQueue, QueuedPacket
from netwarden.platform.linux.procfs import ProcResolver
from netwarden.platform.linux.sockdiag import SocketLookup
from netwarden.platform.packet_headers import Addresses, parse_ip
from netwarden.policy.connect_layer import WATCH_BIT, ConnectLayer

log = logging.getLogger(__name__)

CHAIN = "NETWARDEN-CONNECT"
HOOKS = ("OUTPUT", "INPUT")
NF_INET_LOCAL_IN = 1
TOOLS = (("iptables", "ip"), ("ip6tables", "ip6"))
CREATED_TABLE = "netwarden made this table"
RECENT_PROCESSES = 8  # per user, looked through before a scan of every process


def open_queue(number: int, fail_open: bool, copy: int = COPY_BYTES) -> NfQueue:
    """A bound queue, or a PlatformError that says why not."""
    try:
        return NfQueue(number, fail_open=fail_open, copy=copy)
    except OSError as exc:
        raise PlatformError(
            f"{exc.strerror or exc}; choose another with [settings] connect_queue"
        ) from None


def sides_of(
    packet: QueuedPacket, addresses: Addresses
) -> tuple[ConnectDirection, Endpoint, Endpoint]:
    """A queued packet's direction, and this host's and the peer's ends."""
    _transport, source, destination = addresses
    if packet.hook == NF_INET_LOCAL_IN:
        return ConnectDirection.IN, destination, source
    return ConnectDirection.OUT, source, destination


def parent_pid(pid: int) -> int:
    """The parent's pid (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _holds(pid: int, inode: int) -> bool:
    """Whether process pid has the socket open (a walk of its descriptors)."""
    wanted = f"socket:[{inode}]"
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            return any(_readlink(entry.path) == wanted for entry in entries)
    except OSError:
        return False


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-w", "-t", "mangle", *args], capture_output=True, text=True, check=False
    )


def queue_rules(layer: ConnectLayer) -> list[list[str]]:
    """The rules of netwarden's chain (iptables arguments after -A CHAIN)."""
    bypass = " --queue-bypass" if layer.fail_open else ""
    rules = [f"-m mark --mark {layer.proxy_mark:#x} -j RETURN"]
    if layer.packets:  # every packet of a watched connection: the PACKET layer
        rules.append(
            f"-m connmark --mark {WATCH_BIT:#x}/{WATCH_BIT:#x} -j NFQUEUE "
            f"--queue-num {layer.packet_queue}{bypass}"
        )
    rules.append(f"-m connmark ! --mark 0/{layer.mask:#x} -j RETURN")
    for protocol in ("tcp", "udp"):
        rules.append(
            f"-p {protocol} -m conntrack --ctstate NEW -j NFQUEUE --queue-num {layer.queue}{bypass}"
        )
    return [rule.split() for rule in rules]


def remove_queue_rules() -> bool:
    """Remove netwarden's chain and the jumps to it (nothing else), and the mangle
    table too where netwarden made it and nothing else uses it; True if any was
    there. Also what a crashed daemon left."""
    found = False
    for tool, family in TOOLS:
        listing = _run(tool, "-S")
        if listing.returncode != 0:
            continue
        made_table = CREATED_TABLE in listing.stdout
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and words[-2:] == ["-j", CHAIN]:
                found = True
                _run(tool, "-D", *words[1:])
        if _run(tool, "-F", CHAIN).returncode == 0:
            found = True
            _run(tool, "-X", CHAIN)
        if made_table and "-A " not in _run(tool, "-S").stdout:
            subprocess.run(
                ["nft", "delete", "table", family, "mangle"], capture_output=True, check=False
            )
    return found


def install_queue_rules(layer: ConnectLayer) -> None:
    remove_queue_rules()
    try:
        for tool, family in TOOLS:
            made_table = not nftables.table_exists(family, "mangle")
            result = _run(tool, "-N", CHAIN)
            if result.returncode != 0:
                raise PlatformError(f"{tool}: {result.stderr.strip() or 'cannot add a chain'}")
            for rule in queue_rules(layer):
                result = _run(tool, "-A", CHAIN, *rule)
                if result.returncode != 0:
                    raise PlatformError(
                        f"{tool} refused the NFQUEUE rule ({result.stderr.strip()}); "
                        "`netwarden doctor` says whether this kernel can queue packets"
                    )
            note = ["-m", "comment", "--comment", CREATED_TABLE] if made_table else []
            for hook in HOOKS:
                _run(tool, "-I", hook, "1", *note, "-j", CHAIN)
    except FileNotFoundError:
        remove_queue_rules()
        raise PlatformError("the CONNECT layer needs iptables (iptables-nft)") from None
    except PlatformError:
        remove_queue_rules()
        raise


class LinuxConnectQueue:
    """The queue of first packets in this network namespace, and who sent them."""

    mechanism = "iptables-nft NFQUEUE"

    def __init__(self, layer: ConnectLayer) -> None:
        self.layer = layer
        self._queue = open_queue(layer.queue, layer.fail_open)
        self._lookup = SocketLookup()
        self._resolver = ProcResolver()
        self._recent: dict[int, list[int]] = {}  # uid -> pids that connected lately
        self._marks: dict[int, int] = {}  # ticket -> the packet's mark as it came
        try:
            install_queue_rules(layer)
        except BaseException:
            self._queue.close()
            self._lookup.close()
            raise

    def fileno(self) -> int:
        return self._queue.fileno()

    def receive(self) -> list[ConnectRequest]:
        requests = []
        for packet in self._queue.receive():
            addresses = parse_ip(packet.payload)
            if addresses is None:  # not TCP or UDP (the rules queue only those)
                self._queue.verdict(packet.packet_id, True)
                continue
            transport = addresses[0]
            direction, local, remote = sides_of(packet, addresses)
            self._marks[packet.packet_id] = packet.mark
            requests.append(
                ConnectRequest(
                    packet.packet_id,
                    transport,
                    direction,
                    local,
                    remote,
                    packet.uid,
                    packet.indev or packet.outdev,
                )
            )
        return requests

    def decide(self, request: ConnectRequest, code: int | None) -> None:
        """Release the packet: with the verdict code in its mark, or dropped (None)."""
        mark = self._marks.pop(request.ticket, 0)
        if code is None:
            self._queue.verdict(request.ticket, False)
        else:
            self._queue.verdict(request.ticket, True, (mark & ~self.layer.mask) | code)

    def owner(self, request: ConnectRequest) -> tuple[ProcessInfo | None, Attribution]:
        """The process holding the connection's socket, read now (it is waiting for
        the verdict of its connect, or has just sent its first datagram)."""
        found = self._lookup.find(request.transport, request.local, request.remote)
        if found is None:
            return None, Attribution.unknown("no socket of this host holds the connection")
        inode, uid = found
        if not inode:
            return None, Attribution.unknown("the socket has no file (closed, or the kernel's)")
        pid = self._owner_of(inode, uid)
        if pid is None:
            return None, Attribution.unknown("no process was found holding the socket")
        info = self._resolver.info(pid)
        if info is None:
            return None, Attribution.unknown(f"process {pid} exited before it was read")
        return info, Attribution(AttributionMethod.SOCKET_OWNER)

    def parent_of(self, pid: int) -> ProcessInfo | None:
        parent = parent_pid(pid)
        return self._resolver.info(parent) if parent else None

    def _owner_of(self, inode: int, uid: int) -> int | None:
        """The pid holding a socket: first among the processes of the same user that
        made connections lately (a new socket is most often theirs), then by a scan of
        every process."""
        for pid in reversed(self._recent.get(uid, [])):
            if _holds(pid, inode):
                self._remember(uid, pid)
                return pid
        found = self._resolver.all_owners().get(inode)
        if found is not None:
            self._remember(uid, found)
        return found

    def _remember(self, uid: int, pid: int) -> None:
        recent = self._recent.setdefault(uid, [])
        if pid in recent:
            recent.remove(pid)
        recent.append(pid)
        del recent[:-RECENT_PROCESSES]

    def close(self) -> None:
        remove_queue_rules()
        self._queue.close()
        self._lookup.close()
