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
    """A SuperLink and SuperNodes on 127.0.0.1, logs under ``folder``.

    Insecure by default (loopback only). ``superlink_args`` replaces the SuperLink's command line
    (e.g. TLS and node authentication), ``flwr_config`` replaces the ``flwr`` CLI's config.toml (default: a connection ``loopback``
    with ``insecure = true``). ``isolation="process"`` starts each SuperNode with ``--isolation
    process`` and a long-lived ClientApp process (``python -m fedgmi.flower.worker``) next to it;
    the default ``"subprocess"`` is Flower's: a fresh ClientApp process for every message.

    Use as a context manager; every process started is killed (its whole group) on exit.
    """

    def __init__(self, folder: Path, node_clients: list[str], *, isolation: str = "subprocess",
                 superlink_args: list[str] | None = None,
                 flwr_config: str | None = None, port: int | None = None, fast_poll: bool = False) -> None:
        if isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation = {isolation!r}; allowed: 'subprocess', 'process'")
        self.folder, self.node_clients, self.isolation = Path(folder), node_clients, isolation
        self.fast_poll = fast_poll  # SuperNodes through fedgmi.flower.supernode (idle waits of 0.1 s)
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = port or free_port()
        self.superlink_args = superlink_args or [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                                 "--port", str(self.port), "--disable-runtime-dependency-installation"]
        home = self.folder / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(flwr_config or f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                                         f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}

    def node_args(self, clients: str, port: int) -> list[str]:
        """The command of an insecure SuperNode on this SuperLink holding ``clients``, its Runtime
        API on ``port``."""
        supernode = [sys.executable, "-m", "fedgmi.flower.supernode"] if self.fast_poll else [str(BIN / "flower-supernode")]
        return [*supernode, "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(port), "--node-config", f"client-ids='{clients}'"]

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start ``args`` as process ``name`` (its own session; output in ``{name}.log``)."""
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> Loopback:  # noqa: PYI034
        try:
            self.start("superlink", self.superlink_args)
            wait_port(self.port, 60)
            for i, clients in enumerate(self.node_clients):
                self.start_node(i, clients)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int, clients: str) -> None:
        """Start SuperNode ``node{i}`` holding ``clients`` (e.g. "0-4"); under process isolation
        also its ClientApp process ``worker{i}``."""
        port = free_port()
        args = self.node_args(clients, port)
        if self.isolation == "process":
            args = [*args, "--isolation", "process"]
        node = self.start(f"node{i}", args)
        if self.isolation == "process":
            wait_port(port, 60)
            self.start(f"worker{i}", [sys.executable, "-m", "fedgmi.flower.worker", "--runtime-api-address",
                                       f"127.0.0.1:{port}", "--insecure", "--parent-pid", str(node.pid)])

    def command(self, name: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run ``args`` to completion in the federation's environment (e.g. ``flwr supernode
        register``); output in ``{name}.log`` and returned."""
        done = subprocess.run(args, env=self.env, cwd=self.folder, timeout=timeout, capture_output=True, text=True,
                              check=False)
        (self.folder / f"{name}.log").write_text(done.stdout + done.stderr)
        return done

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` and its children (a crash); ``node{i}`` takes its ClientApp
        process ``worker{i}`` with it."""
        if name.startswith("node") and f"worker{name[4:]}" in self.procs:
            self.kill(f"worker{name[4:]}")
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def run(self, run_config: str, timeout: float) -> subprocess.Popen:
        """Start ``flwr run fedgmi/flower/app loopback --stream --run-config ...`` (logs to
        ``flwr-run.log``)."""
        return self.start("flwr-run", [str(BIN / "flwr"), "run", str(REPO / "fedgmi" / "flower" / "app"), "loopback",
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
