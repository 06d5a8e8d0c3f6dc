"""Types of the C module _native.c (the monitor's per-socket work)."""

from collections.abc import Mapping

class TcpBatch:
    def __len__(self) -> int: ...
    def records(
        self,
    ) -> list[tuple[int, int, str, int, str, int, int, int, int, int, int, int]]: ...
    def groups(self, owners: dict[int, int], /) -> set[tuple[int, int]]: ...
    def write(
        self,
        fd: int,
        templates: Mapping[tuple[int, int], tuple[tuple[bytes, ...], tuple[int, ...]]],
        state_names: tuple[bytes, ...],
        /,
    ) -> int: ...

def dump_tcp(fd: int, /) -> TcpBatch: ...
def scan_socket_inodes(proc: str = "/proc", threads: int = 2) -> tuple[dict[int, int], int]: ...
def task_socket_owners() -> dict[int, int]: ...

class TcpTracker:
    def __init__(self, netns_fd: int = -1) -> None: ...
    def refresh(
        self,
    ) -> tuple[
        list[tuple[int, int, str, int, str, int, int, int, int, int, int, int]],
        list[tuple[int, str, int, str, int]],
    ]: ...
