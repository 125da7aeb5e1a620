"""The processes of a Ray node a test started with `ray start --block`, found from /proc and stopped by pid.

`ray stop` cannot be scoped: it terminates every process on the machine whose name or command line matches
Ray's (gcs_server, raylet, ray::..., dashboard), other users' and other tests' Rays included. A node started
with `--block` in its own session (start_new_session=True) keeps its GCS, raylet, agents and workers below
that one process and in that session, so a test stops exactly its own node.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id), from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = (int(fields[1]), int(fields[3]))
    return out


def node_processes(pid: int) -> list[int]:
    """pid, every process below it and every process of its session (a worker that re-parented itself)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, []))
    found |= {p for p, (_, session) in table.items() if session == pid}
    return sorted(found)


def stop_node(proc: subprocess.Popen) -> None:
    """SIGKILL the node's processes until none is left (a dying raylet may still start a worker)."""
    for _ in range(5):
        pids = [p for p in node_processes(proc.pid) if p != os.getpid()]
        if not pids or pids == [proc.pid] and proc.poll() is not None:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()
        time.sleep(0.5)
    proc.wait(timeout=30)


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} local address (host-order words in hex) -> printable IP."""
    import ipaddress

    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(pids) -> list[tuple[str, int, int]]:
    """(bound address, port, pid) of every TCP socket the given processes listen on, from /proc."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                out.append((_address(host), int(port, 16), inodes[fields[9]]))
    return sorted(set(out))
