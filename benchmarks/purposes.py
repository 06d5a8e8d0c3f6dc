"""The brief's purposes, measured in one run between two network namespaces:

  Scanning: intercepted HTTPS through `netwarden proxy`, EICAR + DLP scanning on
  against off, a download and an upload (goal: on / off >= 0.7x).
  clamd: the time netwarden adds to pass a body with clamd scanning it, against
  `clamdscan --stream` of the same bytes (clamd's own time; goal: added <= 1.2x it).
  Shaping: two programs held to a rate each way for 10 s (measured / limit), and the
  CPU of the whole machine while 1 Gbit/s of unshaped traffic passes by, with
  `netwarden up` shaping against the same daemon without [[shape]] (goal: < 2% of a
  core more).

Run as root: python -m benchmarks.purposes [--rounds 3] [--size-mb 500]
                                          [--parts scanning clamd shaping]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import netwarden
from benchmarks.common import cpu_seconds, machine
from netwarden.testing import clamd, rates, web
from netwarden.testing.certs import make_server_files
from netwarden.testing.netlab import Host, Lab

PY = sys.executable
PROXY_PORT = 15001
SCAN_POLICY = """
[inspect]
intercept_tls = true
upstream_ca = "{ca}"
{scan}
"""
EICAR_DLP = """
[inspect.scan]
scanners = ["eicar"]

[[inspect.dlp]]
name = "cards"
match = "card"

[[inspect.dlp]]
name = "keys"
match = "private_key"

[[inspect.dlp]]
name = "cloud"
match = "cloud_key"
"""
CLAMD = """
[inspect.scan]
scanners = ["clamd"]
clamd = "{socket}"
"""
SHAPE_RATE = 2_000_000
NOTHING = """
[[rule]]
name = "nothing"
action = "log"
direction = "in"
port = 9
"""
SHAPES = f"""
[[shape]]
name = "up"
process = ["nw-uploader"]
upload = {SHAPE_RATE}

[[shape]]
name = "down"
process = ["nw-downloader"]
download = {SHAPE_RATE}
"""
GIGABIT = 125_000_000
Figures = dict[str, float]


def _proxy(client: Host, work: Path, policy: str) -> subprocess.Popen[str]:
    (work / "policy.toml").write_text(policy)
    proxy = client.popen(
        [
            "env",
            f"NETWARDEN_STATE_DIR={work / 'state'}",
            PY,
            "-m",
            "netwarden",
            "proxy",
            "--listen",
            f"127.0.0.1:{PROXY_PORT}",
            "--policy",
            str(work / "policy.toml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    line = proxy.stderr.readline()
    if "listening" not in line:
        raise RuntimeError(f"the proxy did not start: {line}{proxy.stderr.read()}")
    client.run(
        [PY, "-m", "netwarden", "redirect", "--dport", "443", "--to", f"127.0.0.1:{PROXY_PORT}"]
    )
    return proxy


def _stop(client: Host, proxy: subprocess.Popen[str]) -> None:
    client.run([PY, "-m", "netwarden", "down"])
    proxy.terminate()
    proxy.wait(timeout=30)


def _curl(client: Host, ca: Path, *args: str) -> list[str]:
    done = client.run(
        ["curl", "-sS", "--http1.1", "--cacert", str(ca), *args], check=False, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr.strip()}")
    return done.stdout.split()


def _transfers(client: Host, base: str, ca: Path, size: int, upload: Path) -> dict[str, float]:
    down = _curl(
        client,
        ca,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}",
        f"{base}/bytes/{size}",
    )
    if int(down[0]) != size:
        raise RuntimeError(f"download incomplete: {down[0]} of {size}")
    up = _curl(
        client,
        ca,
        "-o",
        "/dev/null",
        "-w",
        "%{speed_upload}",
        "--data-binary",
        f"@{upload}",
        f"{base}/upload",
    )
    return {"download_mb_s": float(down[1]) / 1e6, "upload_mb_s": float(up[0]) / 1e6}


def _text_file(path: Path, size: int) -> None:
    """Text as forms and APIs carry it (letters, digits, punctuation), no card numbers."""
    import base64

    block = base64.b64encode(os.urandom(3 * (1 << 18))) + b"\n"
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: size - written]
            out.write(piece)
            written += len(piece)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def scanning(
    client: Host, base: str, ca: Path, work: Path, rounds: int, size: int
) -> dict[str, Figures]:
    upload = work / "upload.txt"
    _text_file(upload, size // 2)
    ours = work / "state" / "ca" / "ca.pem"
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _round in range(rounds):
        for name, scan in (("off", ""), ("on", EICAR_DLP)):
            proxy = _proxy(client, work, SCAN_POLICY.format(ca=ca, scan=scan))
            runs[name].append(_transfers(client, base, ours, size, upload))
            _stop(client, proxy)
    results = {name: _median(figures) for name, figures in runs.items()}
    print("scanning", results, flush=True)
    return results


def _seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        run()
        times.append(time.monotonic() - started)
    return statistics.median(times)


def clamd_cost(client: Host, base: str, ca: Path, work: Path, rounds: int) -> dict[str, float]:
    size = 20_000_000  # under clamd's StreamMaxLength (25 MiB)
    daemon, sock = clamd.start(work / "clamd", client)
    sample = work / "sample.bin"
    sample.write_bytes(b"x" * size)
    config = work / "clamd" / "client.conf"
    config.write_text(f"LocalSocket {sock}\n")
    ours = work / "state" / "ca" / "ca.pem"
    url = f"{base}/bytes/{size}"

    def fetch() -> None:
        _curl(client, ours, "-o", "/dev/null", url)

    figures: dict[str, float] = {}
    for name, scan in (("plain", ""), ("clamd", CLAMD.format(socket=sock))):
        proxy = _proxy(client, work, SCAN_POLICY.format(ca=ca, scan=scan))
        fetch()
        figures[name] = _seconds(fetch, rounds * 3)
        _stop(client, proxy)

    def clamdscan() -> None:
        client.run(["clamdscan", "--no-summary", "--stream", "-c", str(config), str(sample)])

    clamdscan()
    figures["clamdscan"] = _seconds(clamdscan, rounds * 3)
    daemon.terminate()
    print("clamd", figures, flush=True)
    return figures


def _busy_cores(seconds: float, during: Callable[[], object]) -> float:
    """CPU of the whole machine (in cores) while `during` runs."""

    def busy() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, time.monotonic()

    before, started = busy()
    during()
    after, ended = busy()
    return (after - before) / os.sysconf("SC_CLK_TCK") / (ended - started)


def shaping(client: Host, server: Host, work: Path, rounds: int) -> dict[str, float]:
    source = str(Path(netwarden.__file__).parents[1])
    rates.start(server, 7000)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    bin_dir.chmod(0o755)
    for name in ("nw-uploader", "nw-downloader", "nw-bystander"):
        (bin_dir / name).symlink_to(PY)

    def run_rates(program: str, mode: str, seconds: int, rate: int = 0) -> subprocess.Popen[str]:
        argv = [
            str(bin_dir / program),
            "-m",
            "netwarden.testing.rates",
            mode,
            server.ipv4,
            "7000",
            str(seconds),
        ] + ([str(rate)] if rate else [])
        return client.popen(["env", f"PYTHONPATH={source}", *argv], stdout=subprocess.PIPE)

    def up(policy: str) -> subprocess.Popen[str]:
        (work / "up.toml").write_text(policy)
        daemon = client.popen(
            [
                "env",
                f"NETWARDEN_STATE_DIR={work / 'state'}",
                PY,
                "-m",
                "netwarden",
                "up",
                "--policy",
                str(work / "up.toml"),
                "--no-history",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert daemon.stderr is not None
        while "netwarden: up:" not in (line := daemon.stderr.readline()):
            if not line:
                raise RuntimeError("netwarden up did not start")
        return daemon

    def down(daemon: subprocess.Popen[str]) -> None:
        client.run(["env", f"NETWARDEN_STATE_DIR={work / 'state'}", PY, "-m", "netwarden", "down"])
        daemon.communicate(timeout=30)

    daemon = up(SHAPES)
    runs = [run_rates("nw-uploader", "upload", 10), run_rates("nw-downloader", "download", 10)]
    measured = [json.loads(run.communicate(timeout=90)[0])["rate"] for run in runs]
    down(daemon)
    figures = {"upload_rate": measured[0] / SHAPE_RATE, "download_rate": measured[1] / SHAPE_RATE}

    def gigabit() -> None:
        run = run_rates("nw-bystander", "upload", 10, GIGABIT)
        figures["bystander_mb_s"] = json.loads(run.communicate(timeout=90)[0])["rate"] / 1e6

    cores: dict[str, list[float]] = {"without": [], "with": []}
    daemons: dict[str, list[float]] = {"without": [], "with": []}
    for round_ in range(rounds):
        order = (("without", NOTHING), ("with", SHAPES))
        for name, policy in order if round_ % 2 else order[::-1]:  # no order to favour
            daemon = up(policy)
            # A limited connection held open: its filters sit on the interface.
            held = run_rates("nw-uploader", "upload", 15, 1000)
            time.sleep(1)
            before = cpu_seconds(daemon.pid)
            cores[name].append(_busy_cores(10, gigabit))
            daemons[name].append((cpu_seconds(daemon.pid) - before) / 10)
            held.kill()
            down(daemon)
    for name in ("without", "with"):
        figures[f"cores_{name}"] = statistics.median(cores[name])
        figures[f"daemon_{name}"] = statistics.median(daemons[name])
    # The machine's CPU swings by a few % of a core from run to run: rounds alternate,
    # and what shaping costs is the median of each round's difference.
    figures["cores_added"] = statistics.median(
        with_ - without for with_, without in zip(cores["with"], cores["without"], strict=True)
    )
    print("shaping", figures, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument(
        "--parts", nargs="+", default=["scanning", "clamd", "shaping"], help="what to measure"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="nwbench-"))
    work.chmod(0o755)
    with Lab() as lab:
        client, server = lab.host("client"), lab.host("server")
        lab.link(client, server)
        test_ca, cert, key = make_server_files(work / "server", [server.ipv4])
        web.start(server, 443, cert, key)
        client.run(
            ["env", f"NETWARDEN_STATE_DIR={work / 'state'}", PY, "-m", "netwarden", "ca", "init"]
        )
        base = f"https://{server.ipv4}"
        if "scanning" in args.parts:
            scan = scanning(client, base, test_ca, work, args.rounds, args.size_mb * 1_000_000)
            _print_scanning(scan)
        if "clamd" in args.parts:
            _print_clamd(clamd_cost(client, base, test_ca, work, args.rounds))
        if "shaping" in args.parts:
            _print_shaping(shaping(client, server, work, args.rounds))


def _print_scanning(scan: dict[str, Figures]) -> None:
    print("| figure | off | on | ratio | goal |")
    print("|---|---|---|---|---|")
    for key in ("download_mb_s", "upload_mb_s"):
        off, on = scan["off"][key], scan["on"][key]
        name = f"intercepted HTTPS {key} (EICAR + DLP)"
        print(f"| {name} | {off:.0f} | {on:.0f} | {on / off:.2f}x | >= 0.7x |")
    print(json.dumps(scan))


def _print_clamd(clam: Figures) -> None:
    added = clam["clamd"] - clam["plain"]
    print(
        f"| 20 MB through clamd: netwarden adds {added * 1000:.0f} ms | clamdscan "
        f"{clam['clamdscan'] * 1000:.0f} ms | | {added / clam['clamdscan']:.2f}x | <= 1.2x |"
    )
    print(json.dumps(clam))


def _print_shaping(shape: Figures) -> None:
    print(
        f"| shaping 2 MB/s: upload {shape['upload_rate']:.3f}, download "
        f"{shape['download_rate']:.3f} of the limit | | | | within 10% |"
    )
    more = shape["cores_added"] * 100
    print(
        f"| machine CPU at {shape['bystander_mb_s'] * 8 / 1000:.2f} Gbit/s unshaped | "
        f"{shape['cores_without'] * 100:.1f}% | {shape['cores_with'] * 100:.1f}% | "
        f"{more:+.1f}% of a core (median of the rounds' differences) | < 2% |"
    )
    print(
        f"| of which netwarden up | {shape['daemon_without'] * 100:.1f}% | "
        f"{shape['daemon_with'] * 100:.1f}% | | |"
    )
    print(json.dumps(shape))


if __name__ == "__main__":
    main()
