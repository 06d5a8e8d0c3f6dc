"""Rate limits in the kernel: two IFB devices of netwarden's own (uploads, downloads),
each with an HTB class per limit, and per connection a u32 filter on each interface
that sends its packets there (found by the connection's local port), added before its
first packet goes.

Why this shape: HTB delays packets instead of dropping them (TCP slows down without
retransmissions), and unlike fq/EDT it is in this kernel. Downloads cannot be told
apart by conntrack marks on the way in (tc runs before netfilter there), so each
connection is named by its local port, which the CONNECT layer knows from the first
packet. Interfaces keep their own qdiscs: only a clsact is added (when missing) and
netwarden's filters, at priorities of its own, go on it. Loopback is not shaped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netwarden.platform.base import PlatformError, ShapeClass

log = logging.getLogger(__name__)

UPLOAD_DEVICE = "nw-upload"
DOWNLOAD_DEVICE = "nw-download"
FIRST_PRIO = 40000  # netwarden's filters on the interfaces' clsact use 40000-49999
LAST_PRIO = 49999
CLASS_BASE = 0x10
RUN_DIR = Path("/run/netwarden")


def _state_file() -> Path:
    """What was set up in this network namespace (each has its own devices)."""
    namespace = os.stat("/proc/thread-self/ns/net").st_ino
    return RUN_DIR / f"shaping-net{namespace}.json"


@dataclass(slots=True)
class _Assigned:
    prio: int
    users: int = 1


@dataclass(slots=True)
class TcShaper:
    interfaces: tuple[str, ...] = ()
    classes: tuple[ShapeClass, ...] = ()
    made_clsact: list[str] = field(default_factory=list)
    assigned: dict[tuple[str, int, int], _Assigned] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, classes: Sequence[ShapeClass], interfaces: Sequence[str]) -> None:
        """The devices and classes, and a clsact on each interface to shape."""
        clear_shaping()
        self.classes = tuple(classes)
        self.interfaces = tuple(interfaces)
        self.free = list(range(LAST_PRIO, FIRST_PRIO - 1, -1))
        commands = []
        for device, way in ((UPLOAD_DEVICE, "upload"), (DOWNLOAD_DEVICE, "download")):
            _run(["ip", "link", "add", device, "type", "ifb"])
            _run(["ip", "link", "set", device, "up"])
            commands.append(f"qdisc add dev {device} root handle 1: htb")
            for index, shape in enumerate(self.classes):
                rate = getattr(shape, way)
                if rate:
                    bits = rate * 8
                    commands.append(
                        f"class add dev {device} parent 1: classid 1:{CLASS_BASE + index:x} "
                        f"htb rate {bits}bit ceil {bits}bit"
                    )
        _batch(commands)
        for interface in self.interfaces:
            if _try(["tc", "qdisc", "add", "dev", interface, "clsact"]):
                self.made_clsact.append(interface)
        _write_state(self.interfaces, self.made_clsact)

    def assign(self, transport: str, version: int, local_port: int, index: int) -> None:
        """Shape the connection on this local port by class `index` (before its first
        packet goes on); a port already shaped is only counted."""
        key = (transport, version, local_port)
        with self.lock:
            known = self.assigned.get(key)
            if known is not None:
                known.users += 1
                return
            if not self.free:
                log.warning("shaping: no room for another connection's filters")
                return
            prio = self.free.pop()
            self.assigned[key] = _Assigned(prio)
        shape = self.classes[index]
        commands = []
        family, match = _match(transport, version)
        classid = f"1:{CLASS_BASE + index:x}"
        for way, device, port_field, rate in (
            ("egress", UPLOAD_DEVICE, "sport", shape.upload),
            ("ingress", DOWNLOAD_DEVICE, "dport", shape.download),
        ):
            if not rate:
                continue
            selector = f"{match} match {family} {port_field} {local_port} 0xffff"
            for interface in self.interfaces:
                commands.append(
                    f"filter add dev {interface} {way} prio {prio} protocol {_proto(version)} "
                    f"u32 {selector} action mirred egress redirect dev {device}"
                )
            commands.append(
                f"filter add dev {device} parent 1: prio {prio} protocol {_proto(version)} "
                f"u32 {selector} flowid {classid}"
            )
        _batch(commands)

    def release(self, transport: str, version: int, local_port: int) -> None:
        key = (transport, version, local_port)
        with self.lock:
            known = self.assigned.get(key)
            if known is None:
                return
            known.users -= 1
            if known.users > 0:
                return
            del self.assigned[key]
            self.free.append(known.prio)
        commands = [
            f"filter del dev {interface} {way} prio {known.prio}"
            for interface in self.interfaces
            for way in ("egress", "ingress")
        ]
        commands += [
            f"filter del dev {device} parent 1: prio {known.prio}"
            for device in (UPLOAD_DEVICE, DOWNLOAD_DEVICE)
        ]
        _batch(commands, check=False)

    def close(self) -> None:
        clear_shaping()


def _proto(version: int) -> str:
    return "ip" if version == 4 else "ipv6"


def _match(transport: str, version: int) -> tuple[str, str]:
    number = 6 if transport == "tcp" else 17
    family = "ip" if version == 4 else "ip6"
    return family, f"match {family} protocol {number} 0xff"


def clear_shaping() -> bool:
    """Remove netwarden's shaping (its devices, its filters, the clsacts it added),
    also a crashed daemon's; True if there was any."""
    found = False
    for device in (UPLOAD_DEVICE, DOWNLOAD_DEVICE):
        found |= _try(["ip", "link", "del", device])
    state = _read_state()
    for interface in state.get("interfaces", []):
        found |= _remove_filters(str(interface))
    for interface in state.get("made_clsact", []):
        _try(["tc", "qdisc", "del", "dev", str(interface), "clsact"])
    with contextlib.suppress(OSError):
        _state_file().unlink()
    return found


def _remove_filters(interface: str) -> bool:
    found = False
    for way in ("egress", "ingress"):
        shown = subprocess.run(
            ["tc", "-j", "filter", "show", "dev", interface, way],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            filters = json.loads(shown.stdout or "[]")
        except ValueError:
            continue
        prios = {f.get("pref") for f in filters if FIRST_PRIO <= int(f.get("pref", 0)) <= LAST_PRIO}
        commands = [f"filter del dev {interface} {way} prio {prio}" for prio in sorted(prios)]
        if commands:
            _batch(commands, check=False)
            found = True
    return found


def _write_state(interfaces: Sequence[str], made_clsact: Sequence[str]) -> None:
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"interfaces": list(interfaces), "made_clsact": list(made_clsact)}))


def _read_state() -> dict[str, list[str]]:
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PlatformError(f"shaping: {' '.join(argv)}: {done.stderr.strip()}")


def _try(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _batch(commands: list[str], check: bool = True) -> None:
    if not commands:
        return
    done = subprocess.run(
        ["tc", "-force", "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        raise PlatformError(f"shaping: tc refused: {done.stderr.strip()[:500]}")
