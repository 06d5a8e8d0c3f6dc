"""The CONNECT layer on Linux: the first packet of each new TCP or UDP connection,
outgoing and incoming, is queued (NFQUEUE) for a verdict, with the process that owns
its socket.

The C module's ConnectReader reads the queue, finds each packet's socket and names the
process that connected a TCP socket from a BPF program (see _connectqueue.c);
PythonConnectReader does the same work without a compiler, finding every process by
its descriptors.

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
from typing import NamedTuple, Protocol

from netwarden.model import Attribution, AttributionMethod, Endpoint, ProcessInfo, Transport
from netwarden.model.connect import ConnectDirection, ConnectRequest
from netwarden.platform.base import PlatformError
from netwarden.platform.linux import netns as netns_api
from netwarden.platform.linux import nftables
from netwarden.platform.linux.nfqueue import COPY_BYTES, NfQueue
from netwarden.platform.linux.procfs import ProcResolver, bpf_pids_are_ours
from netwarden.platform.linux.sockdiag import SocketLookup
from netwarden.platform.packet_headers import parse_ip
from netwarden.policy.connect_layer import WATCH_BIT, ConnectLayer

try:
    from netwarden.platform.linux import _native
except ImportError:  # built without a compiler
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHAIN = "NETWARDEN-CONNECT"
HOOKS = ("OUTPUT", "INPUT")
NF_INET_LOCAL_IN = 1
TOOLS = (("iptables", "ip"), ("ip6tables", "ip6"))
MADE_TABLE = "NETWARDEN-MADE-TABLE"  # an empty chain in a mangle table netwarden made
CREATED_TABLE = "netwarden made this table"  # the comment earlier versions left instead
RECENT_PROCESSES = 8  # per user, looked through before a scan of every process
NO_SOCKET = -1
_TRANSPORTS = {6: Transport.TCP, 17: Transport.UDP}

# (packet id, hook, mark, uid or -1, in interface, out interface, protocol (0: neither
# TCP nor UDP), source, source port, destination, destination port, socket inode
# (NO_SOCKET: none), socket uid, pid that connected it (0: unknown))
Received = tuple[int, int, int, int, int, int, int, str, int, str, int, int, int, int]


class ConnectReader(Protocol):
    def receive(self) -> list[Received]: ...

    def verdict(self, packet_id: int, accept: bool, mark: int = -1, /) -> None: ...

    def close(self) -> None: ...


class PythonConnectReader:
    """The C module's ConnectReader in Python: no process is named (pid 0) but by the
    walk of descriptors that follows."""

    def __init__(self, queue: NfQueue) -> None:
        self._queue = queue
        self._lookup = SocketLookup()

    def receive(self) -> list[Received]:
        received: list[Received] = []
        for packet in self._queue.receive():
            uid = -1 if packet.uid is None else packet.uid
            head = (packet.packet_id, packet.hook, packet.mark, uid, packet.indev, packet.outdev)
            addresses = parse_ip(packet.payload)
            if addresses is None:
                received.append((*head, 0, "", 0, "", 0, NO_SOCKET, -1, 0))
                continue
            transport, source, destination = addresses
            _direction, local, remote = sides_of(packet.hook, source, destination)
            found = self._lookup.find(transport, local, remote)
            inode, socket_uid = found if found is not None else (NO_SOCKET, -1)
            ends = (source.address, source.port, destination.address, destination.port)
            received.append((*head, transport.number, *ends, inode, socket_uid, 0))
        return received

    def verdict(self, packet_id: int, accept: bool, mark: int = -1, /) -> None:
        self._queue.verdict(packet_id, accept, None if mark < 0 else mark)

    def close(self) -> None:
        self._lookup.close()


def open_reader(queue: NfQueue) -> ConnectReader:
    """The C module's reader where it is built, else the Python one."""
    if _native is None or not hasattr(_native, "ConnectReader"):
        return PythonConnectReader(queue)
    named = bpf_pids_are_ours()
    reader = _native.ConnectReader(
        queue.fileno(), queue.number, netns_api.inode_of(None), owners=named
    )
    if not named:
        log.info(
            "connecting processes are found by their open files (netwarden runs in a pid "
            "namespace of its own: BPF programs would name other pids)"
        )
    elif reader.owners_error:
        log.info(
            "connecting processes are found by their open files (the BPF program that "
            "names them could not load: %s)",
            os.strerror(reader.owners_error),
        )
    return reader


class _Held(NamedTuple):  # (a named tuple: one is made for every new connection)
    """What the reader said of a packet held for its verdict."""

    mark: int
    inode: int
    uid: int
    pid: int


def open_queue(number: int, fail_open: bool, copy: int = COPY_BYTES) -> NfQueue:
    """A bound queue, or a PlatformError that says why not."""
    try:
        return NfQueue(number, fail_open=fail_open, copy=copy)
    except OSError as exc:
        raise PlatformError(
            f"{exc.strerror or exc}; choose another with [settings] connect_queue"
        ) from None


def sides_of(
    hook: int, source: Endpoint, destination: Endpoint
) -> tuple[ConnectDirection, Endpoint, Endpoint]:
    """A queued packet's direction (by the netfilter hook that queued it), and this
    host's and the peer's ends."""
    if hook == NF_INET_LOCAL_IN:
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
        made_table = MADE_TABLE in listing.stdout or CREATED_TABLE in listing.stdout
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and words[-2:] == ["-j", CHAIN]:
                found = True
                _run(tool, "-D", *words[1:])
        for chain in (CHAIN, MADE_TABLE):
            if _run(tool, "-F", chain).returncode == 0:
                found = True
                _run(tool, "-X", chain)
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
            if made_table:  # an empty chain says so (a comment would cost every packet)
                _run(tool, "-N", MADE_TABLE)
            # Packets of established connections need not enter the chain, unless the
            # PACKET layer queues every packet of watched ones.
            new_only = [] if layer.packets else ["-m", "conntrack", "--ctstate", "NEW"]
            for hook in HOOKS:
                _run(tool, "-I", hook, "1", *new_only, "-j", CHAIN)
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
        self._resolver = ProcResolver()
        self._recent: dict[int, list[int]] = {}  # uid -> pids that connected lately
        self._held: dict[int, _Held] = {}  # by ticket
        try:
            self._reader = open_reader(self._queue)
        except BaseException:
            self._queue.close()
            raise
        try:
            install_queue_rules(layer)
        except BaseException:
            self._reader.close()
            self._queue.close()
            raise

    def fileno(self) -> int:
        return self._queue.fileno()

    def receive(self) -> list[ConnectRequest]:
        requests = []
        for received in self._reader.receive():
            ticket, hook, mark, uid, indev, outdev, protocol = received[:7]
            transport = _TRANSPORTS.get(protocol)
            if transport is None:  # not TCP or UDP (the rules queue only those)
                self._reader.verdict(ticket, True)
                continue
            source = Endpoint(received[7], received[8])
            destination = Endpoint(received[9], received[10])
            direction, local, remote = sides_of(hook, source, destination)
            self._held[ticket] = _Held(mark, received[11], received[12], received[13])
            requests.append(
                ConnectRequest(
                    ticket,
                    transport,
                    direction,
                    local,
                    remote,
                    None if uid < 0 else uid,
                    indev or outdev,
                )
            )
        return requests

    def decide(self, request: ConnectRequest, code: int | None) -> None:
        """Release the packet: with the verdict code in its mark, or dropped (None)."""
        held = self._held.pop(request.ticket, None)
        mark = held.mark if held is not None else 0
        if code is None:
            self._reader.verdict(request.ticket, False)
        else:
            self._reader.verdict(request.ticket, True, (mark & ~self.layer.mask) | code)

    def owner(self, request: ConnectRequest) -> tuple[ProcessInfo | None, Attribution]:
        """The process that connected the socket (named by the kernel as it did), or the
        one holding it, read now (it is waiting for the verdict of its connect, or has
        just sent its first datagram)."""
        held = self._held.get(request.ticket)
        if held is None or held.inode == NO_SOCKET:
            return None, Attribution.unknown("no socket of this host holds the connection")
        if not held.inode:
            return None, Attribution.unknown("the socket has no file (closed, or the kernel's)")
        if held.pid:
            pid: int | None = held.pid
            method = AttributionMethod.FLOW_EVENT
        else:
            pid = self._owner_of(held.inode, held.uid)
            method = AttributionMethod.SOCKET_OWNER
        if pid is None:
            return None, Attribution.unknown("no process was found holding the socket")
        info = self._resolver.info(pid)
        if info is None:
            return None, Attribution.unknown(f"process {pid} exited before it was read")
        return info, Attribution(method)

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
        self._reader.close()
        self._queue.close()
