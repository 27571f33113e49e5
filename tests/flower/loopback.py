"""A Flower federation on 127.0.0.1 for tests and measurements: one SuperLink and SuperNodes as
local processes (each in its own process group, stopped on exit even when a test fails), and
``flwr run`` of the fedgmi app on it. Nothing listens beyond the loopback address."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    """Wait until something listens on 127.0.0.1:port (TimeoutError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Loopback:
    """A SuperLink and SuperNodes on 127.0.0.1 (insecure: loopback only), logs under ``folder``.

    Use as a context manager; every process started is killed (its whole group) on exit.
    """

    def __init__(self, folder: Path, node_clients: list[str]) -> None:
        self.folder, self.node_clients = Path(folder), node_clients
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        home = self.folder / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                          f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> Loopback:  # noqa: PYI034
        try:
            self._start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--disable-runtime-dependency-installation"])
            wait_port(self.port, 60)
            for i, clients in enumerate(self.node_clients):
                self.start_node(i, clients)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int, clients: str) -> None:
        """Start SuperNode ``node{i}`` holding ``clients`` (e.g. "0-4")."""
        self._start(f"node{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                 f"127.0.0.1:{self.port}", "--port", str(free_port()),
                                 "--node-config", f"client-ids='{clients}'"])

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` and its children (a crash)."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def run(self, run_config: str, timeout: float) -> subprocess.Popen:
        """Start ``flwr run fedgmi/flower/app loopback --stream --run-config ...`` (logs to
        ``flwr-run.log``)."""
        return self._start("flwr-run", [str(BIN / "flwr"), "run", str(REPO / "fedgmi" / "flower" / "app"), "loopback",
                                        "--stream", "--run-config", run_config])

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def _stray(self) -> list[int]:
        """Live processes in the sessions of the processes started (children that left their
        process group, e.g. Flower's SuperExec and app processes)."""
        sessions, found = {p.pid for p in self.procs.values()}, []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) in sessions and fields[0] != "Z":  # field 6 of stat: session id
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Stop every process started and its children (SIGTERM to its group, SIGKILL after 5 s,
        then SIGKILL to anything left in their sessions)."""
        stray = self._stray()
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()

    def __exit__(self, *exc) -> None:
        self.stop()
