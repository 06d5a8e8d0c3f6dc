"""The Linux backend: opens the monitor's sources inside one network namespace."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from netwarden.model import ProcessInfo
from netwarden.model.observations import AddressSource
from netwarden.platform.base import (
    Capability,
    ConnectQueue,
    Firewall,
    FlowCounterEvents,
    FlowCounterTable,
    FlowStamps,
    PacketQueue,
    ProcessResolver,
    Shaper,
    SocketClosedEvents,
    SocketTable,
)
from netwarden.platform.linux import netns as netns_api
from netwarden.platform.linux.addresses import LocalAddresses
from netwarden.platform.linux.conntrack import (
    ConntrackActivation,
    ConntrackDump,
    ConntrackEventStream,
)
from netwarden.platform.linux.exec_records import ExecRecords, completed_by, open_exec_records
from netwarden.platform.linux.other_sockets import open_other_sockets
from netwarden.platform.linux.procfs import ProcResolver, may_load_bpf, read_process
from netwarden.platform.linux.sockdiag import SockDiagDestroyEvents, SockDiagTable
from netwarden.policy.connect_layer import ConnectLayer

log = logging.getLogger(__name__)

MONITOR_TABLE = "netwarden_monitor"  # + "_PID": one table per monitor process


def monitor_table_name(pid: int) -> str:
    return f"{MONITOR_TABLE}_{pid}"


@dataclass
class LinuxSources:
    sockets: SocketTable
    processes: ProcessResolver
    netns: str
    closed_sockets: SocketClosedEvents | None = None
    flow_counters: FlowCounterTable | None = None
    flow_counter_events: FlowCounterEvents | None = None
    flow_stamps: FlowStamps | None = None
    addresses: AddressSource | None = None
    missing: tuple[str, ...] = ()
    exec_records: ExecRecords | None = None

    def close(self) -> None:
        for source in (
            self.flow_stamps,
            self.flow_counter_events,
            self.closed_sockets,
            self.addresses,
        ):
            if source is not None:
                source.close()
        self.sockets.close()
        if self.flow_counters is not None:
            self.flow_counters.close()
        if self.exec_records is not None:
            self.exec_records.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _pid_in_namespace(inode: int) -> Callable[[int], bool]:
    expected = f"net:[{inode}]"

    def accept(pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/net") == expected
        except OSError:
            return True  # already gone: keep it, the 4-tuple still has to match a socket

    return accept


class LinuxBackend:
    def __init__(self, monitor_table_prefix: str = MONITOR_TABLE) -> None:
        self.monitor_table_prefix = monitor_table_prefix

    @contextmanager
    def open_sources(self, netns: str | None, *, events: bool) -> Iterator[LinuxSources]:
        missing: list[str] = []
        is_root = os.geteuid() == 0
        activation = ConntrackActivation(self.monitor_table_prefix, os.getpid())
        with netns_api.entered(netns):
            table = SockDiagTable()
            resolver = ProcResolver()
            if is_root:
                table.others = open_other_sockets(netns)
            sources = LinuxSources(
                sockets=table,
                processes=resolver,
                netns=netns or "",
                addresses=LocalAddresses(),
            )
            if not is_root:
                missing.append(
                    "not root: sockets of other users show no process, and UDP byte counts "
                    "(conntrack) are unavailable"
                )
            try:
                dump = ConntrackDump()
                sources.flow_counters = dump
                dump.check_access()  # reading it needs CAP_NET_ADMIN: find out now
                if events:
                    if is_root:
                        activation.enable()
                    sources.flow_counter_events = ConntrackEventStream()
            except (OSError, RuntimeError) as exc:
                if sources.flow_counters is not None:
                    sources.flow_counters.close()
                    sources.flow_counters = None
                missing.append(
                    f"conntrack unavailable ({_reason(exc)}): UDP flows have no byte counts"
                )
            if events:
                try:
                    destroyed = SockDiagDestroyEvents()
                    if table.others is not None:
                        destroyed.peer_fin = table.others.peer_fin
                    sources.closed_sockets = destroyed
                except OSError as exc:
                    missing.append(
                        f"sock_diag destroy events unavailable ({exc}): short connections "
                        "may be missed"
                    )
        if events:
            reader: Callable[[int], ProcessInfo | None] = read_process
            if is_root:
                sources.exec_records = open_exec_records()
                if sources.exec_records is not None:
                    reader = completed_by(read_process, sources.exec_records)
                    resolver.read = reader
            sources.flow_stamps = self._flow_stamps(netns, missing, reader)
        sources.missing = tuple(missing)
        try:
            yield sources
        finally:
            sources.close()
            if activation.created_table:
                with netns_api.entered(netns):
                    activation.disable()

    @staticmethod
    def _flow_stamps(
        netns: str | None, missing: list[str], read_process: Callable[[int], ProcessInfo | None]
    ) -> FlowStamps | None:
        if not may_load_bpf():
            missing.append(
                "flow events need root (CAP_BPF): processes that exit within a second may "
                "show as unknown"
            )
            return None
        from netwarden.platform.linux.flow_events import FlowEventsUnavailable, KernelFlowStamps

        try:
            return KernelFlowStamps(read_process, netns)
        except (OSError, FlowEventsUnavailable) as exc:
            log.info("netwarden's BPF flow events unavailable (%s); trying pydivert", exc)
        try:
            from netwarden.platform.divert_flows import DivertFlowStamps

            accept = _pid_in_namespace(netns_api.inode_of(netns))
            return DivertFlowStamps(read_process, accept)
        except (ImportError, OSError, NotImplementedError, RuntimeError) as exc:
            missing.append(
                f"flow events unavailable ({exc}): processes that exit within a second "
                "may show as unknown"
            )
            return None

    def firewall(self) -> Firewall:
        from netwarden.platform.linux.firewall import LinuxFirewall

        return LinuxFirewall()

    def run_scoped(self, scope: str, argv: Sequence[str]) -> int:
        from netwarden.platform.linux import scopes

        return scopes.run(scope, argv)

    def process_alive(self, pid: int) -> bool:
        from netwarden.platform.linux.procfs import pid_alive

        return pid_alive(pid)

    def monitor_table(self, pid: int) -> str:
        return monitor_table_name(pid)

    def capabilities(self) -> list[Capability]:
        from netwarden.platform.linux.doctor import probe_all

        return probe_all()

    def original_destination(self, sock: socket.socket) -> tuple[str, int]:
        from netwarden.platform.linux.original_dst import original_destination

        return original_destination(sock)

    def connect_queue(self, layer: ConnectLayer) -> ConnectQueue:
        from netwarden.platform.linux.connect_queue import LinuxConnectQueue

        return LinuxConnectQueue(layer)

    def packet_queue(self, layer: ConnectLayer) -> PacketQueue:
        from netwarden.platform.linux.packet_queue import LinuxPacketQueue

        return LinuxPacketQueue(layer)

    def clear_connect_queue(self) -> bool:
        from netwarden.platform.linux.connect_queue import remove_queue_rules

        return remove_queue_rules()

    def shaper(self) -> Shaper:
        from netwarden.platform.linux.shaper import TcShaper

        return TcShaper()

    def shaped_interfaces(self) -> list[str]:
        return [name for _index, name in socket.if_nameindex() if name != "lo"]

    def clear_shaping(self) -> bool:
        from netwarden.platform.linux.shaper import clear_shaping

        return clear_shaping()

    def clean_dead_monitors(self) -> list[str]:
        from netwarden.platform.linux.conntrack import clean_dead_monitors

        return clean_dead_monitors(self.monitor_table_prefix)
