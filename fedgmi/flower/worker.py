"""A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process
(started by ``flower-superexec``, inside the SuperNode under the default ``subprocess``
isolation, or separately under ``process`` isolation): each message pays for Python, torch,
fedgmi and the scenario again. This process takes ``flower-superexec``'s place next to a
SuperNode started with ``--isolation process`` and runs the ClientApp tasks itself, one after the
other, in the same process, with Flower's own steps of ``flwr-clientapp`` (pull the message and
the node's context from the SuperNode's Runtime API, run the app, push the reply and the
context; the object pulls retry sooner, :mod:`fedgmi.flower.pulls`). fedgmi's ClientApp builds its scenario and strategy once per process
(:func:`fedgmi.flower.runtime.client_side`), so they are built once per node and run config.

Usage, next to each SuperNode (same machine; the Runtime API listens on 127.0.0.1)::

    flower-supernode --isolation process --port 9094 ...
    python -m fedgmi.flower.worker --runtime-api-address 127.0.0.1:9094 --insecure

The node's state between messages stays in the SuperNode (Flower's ``context``), as under
subprocess isolation; a task that raises becomes Flower's error reply, as in ``flwr-clientapp``.
The worker stops with the SuperNode (``--parent-pid``) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from logging import ERROR, INFO

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedgmi.flower.pulls import shorten_pull_backoff

#: Seconds between two ``AcquireTask`` polls when no task waits (``flower-superexec``: 1 s).
DEFAULT_POLL_S = 0.1


def _client(address: str, certificates: bytes | None, insecure: bool, token: str | None) -> RuntimeHttpClient:
    component = "flwr-clientapp" if token else "SuperExec"  # acquiring tasks is SuperExec's call
    interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=insecure,
                                                 root_certificates=certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


def run_task(address: str, certificates: bytes | None, insecure: bool, token: str) -> str:
    """Run one ClientApp task (the task ``token`` names) in this process; returns its sub-status
    (``"completed"`` or ``"failed"``). Flower's ``flwr-clientapp`` steps, without the process exit:
    an exception of the app becomes an error reply, as there. Logs one line when the task
    starts and, when it completed, one with its times in seconds (pulling the message and
    context, running the app, pushing the reply and context)."""
    client = _client(address, certificates, insecure, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    times = [time.perf_counter()]
    try:
        message, context, run, fab = pull_task_input(client)
        times.append(time.perf_counter())
        log(INFO, "fedgmi.flower.worker: %s message (group %s) of run %s", message.metadata.message_type,
            message.metadata.group_id or "-", run.run_id)
        install_from_fab(fab.content, skip_prompt=True)  # a no-op once the app is installed
        app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        times.append(time.perf_counter())
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - as flwr-clientapp: the error goes back as the reply
        code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
        details = f"{type(ex)}:<'{ex}'>"
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
    if len(times) == 3:
        log(INFO, "fedgmi.flower.worker: done: pulled in %.3f s, ran in %.3f s, replied in %.3f s",
            times[1] - times[0], times[2] - times[1], time.perf_counter() - times[2])
    return status


def serve(address: str, insecure: bool, root_certificates: str | None = None, poll_s: float = DEFAULT_POLL_S,
          stop: threading.Event | None = None) -> None:
    """Acquire the SuperNode's ClientApp tasks and run them here, one at a time, until ``stop``
    is set (or SIGTERM/SIGINT when run as a command).

    Args:
        address: The SuperNode's Runtime API, ``host:port`` (its ``--port``).
        insecure: Plain HTTP to the Runtime API (a SuperNode started without ``--ssl-*``).
        root_certificates: CA file of the Runtime API's TLS certificate (not with ``insecure``).
        poll_s: Seconds between two polls when no task waits (> 0).
        stop: Set to stop after the current task.

    Raises:
        ValueError: ``poll_s`` <= 0.
    """
    if poll_s <= 0:
        raise ValueError(f"poll_s = {poll_s!r} must be a number of seconds > 0")
    stop = stop or threading.Event()
    shorten_pull_backoff()
    certificates = validate_and_resolve_root_certificates(root_certificates, insecure)
    acquirer = _client(address, certificates, insecure, None)
    log(INFO, "fedgmi.flower.worker: serving the ClientApp tasks of the SuperNode at %s", address)
    try:
        while not stop.is_set():
            res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
            if res.HasField("task") and res.token:
                run_task(address, certificates, insecure, res.token)
            else:
                stop.wait(poll_s)
    finally:
        acquirer.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m fedgmi.flower.worker``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m fedgmi.flower.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    group.add_argument("--root-certificates", help="CA file of the Runtime API's TLS certificate")
    parser.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S, help="seconds between polls (default 0.1)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    if args.poll_s <= 0:
        parser.error(f"--poll-s = {args.poll_s} must be a number of seconds > 0")
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(args.runtime_api_address, args.insecure, args.root_certificates, args.poll_s, stop)


if __name__ == "__main__":
    main()
