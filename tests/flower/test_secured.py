"""The secured deployment of docs/guide/flower.md, run as written: TLS and node authentication
on 127.0.0.1 with a throwaway CA and node keys (tests/flower/pki.py). The commands are the
guide's own (its ``secured-deployment`` blocks), with this test's files for ``/path/to``,
127.0.0.1 for ``SERVER`` and free ports for 9093-9095, so the guide cannot drift from what is
tested. Refused, each within a bounded time and never listed online by the SuperLink: a node
with ``--insecure``, a node without the CA, a node whose key was never registered."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e \".[flower]\")")

from tests.flower.loopback import REPO, Loopback, free_port, wait_port
from tests.flower.pki import make_certs, make_node_key
from tests.flower.test_flower import check_equals_in_process

GUIDE = REPO / "docs" / "guide" / "flower.md"
MARKER = "<!-- secured-deployment"  # before the guide's blocks, and the README's short form


@dataclass
class Deployment:
    """The guide's secured deployment with this test's files and ports filled in."""

    flwr_config: str  # the operator's config.toml
    commands: list[list[str]]  # the shell block's commands, in order
    port: int  # the SuperLink's

    def all(self, *words: str) -> list[list[str]]:
        """The commands that start with ``words`` (e.g. ``"flwr", "supernode", "register"``)."""
        return [c for c in self.commands if tuple(c[:len(words)]) == words]

    def one(self, *words: str) -> list[str]:
        (found,) = self.all(*words)
        return found


def block(path: Path, lang: str) -> str:
    """The first ``lang`` block after the ``secured-deployment`` marker of ``path``."""
    text = path.read_text()
    assert MARKER in text, f"{path.name} lost its {MARKER} marker"
    found = re.search(rf"```{lang}\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert found, f"{path.name}: no {lang} block after {MARKER}"
    return found.group(1)


def guide_blocks() -> tuple[str, str]:
    """The guide's TOML (the ``flwr`` connection) and shell block."""
    return block(GUIDE, "toml"), block(GUIDE, "bash")


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block (continuations joined, comments left out), split."""
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def deployment(folder: Path) -> Deployment:
    """Throwaway CA, SuperLink certificate and node keys under ``folder``, and the guide's
    commands with them, 127.0.0.1 and free ports."""
    certs = make_certs(folder / "certs")
    for i in (0, 1):
        make_node_key(folder / "keys" / f"node_{i}")
    ports = {"9093": free_port(), "9094": free_port(), "9095": free_port()}
    toml, shell = guide_blocks()

    def fill(text: str) -> str:
        text = (text.replace("/path/to/certs", str(certs.ca.parent)).replace("/path/to/keys", str(folder / "keys"))
                .replace("SERVER", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
                .replace("fedgmi/flower/app", str(REPO / "fedgmi" / "flower" / "app")))
        return re.sub(r"\b(909[345])\b", lambda m: str(ports[m.group(1)]), text)

    return Deployment(fill(toml), shell_commands(fill(shell)), ports["9093"])


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def without(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value."""
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def register(fed: Loopback, dep: Deployment) -> list[int]:
    """Run the guide's ``flwr supernode register`` lines; the node ids the SuperLink gave."""
    ids = []
    for i, args in enumerate(dep.all("flwr", "supernode", "register")):
        done = fed.command(f"register{i}", args, timeout=120)
        found = re.search(r"SuperNode (\d+) registered", done.stdout)
        assert done.returncode == 0 and found, done.stdout + done.stderr
        ids.append(int(found.group(1)))
    return ids


def node_status(fed: Loopback, dep: Deployment) -> dict[int, str]:
    """Node id -> status ("registered", "online", ...) from the guide's ``flwr supernode list``."""
    done = fed.command("list", [*dep.one("flwr", "supernode", "list"), "--format", "json"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return {int(n["node-id"]): n["status"] for n in json.loads(done.stdout)["nodes"]}


def wait_for(condition, timeout: float, what: str, fed: Loopback) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = {name: fed.log(name)[-1500:] for name in fed.procs if (fed.folder / f"{name}.log").is_file()}
            pytest.fail(f"{what} not within {timeout} s; logs: {logs}")
        time.sleep(0.5)


def test_guide_commands_are_secured(tmp_path: Path) -> None:
    """The guide's secured commands use TLS and node authentication everywhere (no --insecure but
    the worker's local Runtime API), and absolute paths in the connection."""
    dep = deployment(tmp_path)
    assert "--enable-supernode-auth" in dep.one("flower-superlink")
    for node in dep.all("flower-supernode"):
        assert "--insecure" not in node and {"--root-certificates", "--auth-supernode-private-key"} <= set(node)
    assert re.search(r'^root-certificates = "/', guide_blocks()[0], re.MULTILINE)
    assert len(dep.all("flwr", "supernode", "register")) == len(dep.all("flower-supernode")) == 2


def test_readme_short_form_is_the_guides() -> None:
    """Every command of the README's short form is one of the guide's tested commands."""
    guide = shell_commands(guide_blocks()[1])
    readme = shell_commands(block(REPO / "README.md", "bash"))
    assert len(readme) >= 4
    for command in readme:
        assert command in guide, " ".join(command)


def test_insecure_unknown_ca_and_unregistered_nodes_are_refused(tmp_path: Path) -> None:
    """Against the guide's SuperLink (TLS, node authentication), with node 0 admitted as a
    control: a node with --insecure, one without the CA (node 1's registered key) and one with a
    key never registered are refused (their logs say why) and never listed online."""
    dep = deployment(tmp_path / "pki")
    with Loopback(tmp_path, [], superlink_args=dep.one("flower-superlink"), flwr_config=dep.flwr_config,
                  port=dep.port) as fed:
        id0, id1 = register(fed, dep)
        node0, node1 = dep.all("flower-supernode")
        stranger = make_node_key(tmp_path / "pki" / "keys" / "stranger")
        key = option(node1, "--auth-supernode-private-key")
        plain = without(without(node1, "--root-certificates"), "--auth-supernode-private-key")
        variants = {
            "insecure": [plain[0], "--insecure", *plain[1:]],
            "no-ca": without(node1, "--root-certificates"),
            "unregistered": [str(stranger) if a == key else a for a in node1],
        }
        fed.start("node0", node0)
        for name, args in variants.items():  # each its own Runtime API port
            fed.start(name, [str(free_port()) if a == option(node1, "--port") else a for a in args])
        logs = {name: lambda name=name: fed.log(name) for name in ["node0", *variants]}
        wait_for(lambda: "SuperNode ID:" in logs["node0"]() and "Connection attempt failed" in logs["insecure"]()
                 and fed.procs["no-ca"].poll() is not None and fed.procs["unregistered"].poll() is not None,
                 90, "node 0 admitted and the others refused", fed)
        assert f"SuperNode ID: {id0}" in logs["node0"]()
        assert "CERTIFICATE_VERIFY_FAILED" in logs["no-ca"]() and fed.procs["no-ca"].returncode != 0
        assert "Failed to activate SuperNode" in logs["unregistered"]() and fed.procs["unregistered"].returncode != 0
        assert fed.procs["insecure"].poll() is None  # it retries, in vain
        for name in variants:
            assert "SuperNode ID:" not in logs[name](), name
        assert node_status(fed, dep) == {id0: "online", id1: "registered"}  # the stranger's key: not listed


@pytest.mark.slow  # a secured federation, two long-lived ClientApp processes, 3 rounds and fedgmi fit
def test_secured_deployment_equals_in_process_run(tmp_path: Path) -> None:
    """The guide's commands, in order: a 3-round FedGMI run through TLS and node authentication,
    with long-lived ClientApp processes, ends with the in-process run's state and metrics."""
    dep = deployment(tmp_path / "pki")
    with Loopback(tmp_path / "fed", [], superlink_args=dep.one("flower-superlink"), flwr_config=dep.flwr_config,
                  port=dep.port) as fed:
        ids = register(fed, dep)
        nodes, workers = dep.all("flower-supernode"), dep.all("python", "-m", "fedgmi.flower.worker")
        for i, (node, worker) in enumerate(zip(nodes, workers, strict=True)):
            fed.start(f"node{i}", node)
            wait_port(int(option(node, "--port")), 60)
            assert option(worker, "--runtime-api-address") == f"127.0.0.1:{option(node, '--port')}"
            fed.start(f"worker{i}", worker)
        wait_for(lambda: node_status(fed, dep) == dict.fromkeys(ids, "online"), 120, "both nodes online", fed)
        run = dep.one("flwr", "run")
        overrides = "--algorithm.init_args.local_epochs 1 --federation.rounds 3"  # 10 clients: the guide's nodes

        def start(run_config: str) -> subprocess.Popen:
            return fed.start("flwr-run", [*run[:run.index("--run-config") + 1], run_config])

        check_equals_in_process(fed, start, overrides, tmp_path)
        assert all("fedgmi.flower.worker: train message" in fed.log(f"worker{i}") for i in range(2))
