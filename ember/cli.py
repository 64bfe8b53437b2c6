"""The ``ember`` command: ``start`` and ``stop`` cluster nodes, ``status`` of a cluster or machine.

``ember start --head`` / ``ember start --address HOST:PORT`` run a node (ember/dynamic/cluster/node.py);
without ``--block`` the node runs in the background, its output in ``node.log`` of its session
folder, and the command returns once the node is up. ``ember stop`` ends the nodes this user
started on this machine (Note [node records] in ember/dynamic/cluster/node_records.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"GPU_A\": 1}'")
    return value


def start(args: argparse.Namespace) -> int:
    """Start a head or a node that joins ``--address``; in the foreground with ``--block``."""
    from ember.dynamic.cluster import node
    if args.head == bool(args.address):
        print("ember start: give exactly one of --head or --address HOST:PORT", file=sys.stderr)
        return 2
    options = {"head": args.head, "address": args.address, "port": args.port,
               "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
               "resources": args.resources, "labels": args.labels,
               "node_ip_address": args.node_ip_address,
               "object_store_memory": args.object_store_memory}
    if args.block:
        return node.run(options)
    read_fd, write_fd = os.pipe()
    log = tempfile.NamedTemporaryFile(prefix="ember-node-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "ember.dynamic.cluster.node", json.dumps(options),
                             str(write_fd)], pass_fds=(write_fd,), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        answer = ready.read()
    if proc.poll() is not None or not answer or answer.startswith("ERROR"):
        proc.wait(timeout=30)
        with open(log.name) as file:
            sys.stderr.write(file.read())
        os.unlink(log.name)
        print(f"ember start failed: {answer.strip() or 'the node exited'}", file=sys.stderr)
        return 1
    os.unlink(log.name)   # the node logs into its session folder from now on
    print(answer, end="")
    return 0


def stop(_: argparse.Namespace) -> int:
    """Stop every node this user started on this machine."""
    from ember.dynamic.cluster.node_records import stop_all
    stopped = stop_all()
    for record in stopped:
        print(f"stopped ember node {record['node_id']} (pid {record['pid']})")
    if not stopped:
        print("no ember node is running here")
    return 0


def status(args: argparse.Namespace) -> int:
    """Print the cluster's nodes and resources, or this machine's when no cluster runs."""
    from ember.dynamic.cluster import node_records
    address = args.address
    if address is None:
        record = node_records.local_node()
        address = record["address"] if record else None
    if address is None:
        return _machine_status()
    try:
        facts = node_records.ask_head(address)
        nodes, actors, graphs = _cluster_tables(facts["gcs_address"])
    except Exception as exc:  # noqa: BLE001 - a status command reports, it does not crash
        print(f"ember status: cannot reach the cluster at {address}: {exc}", file=sys.stderr)
        return 1
    alive = [(nid, r) for nid, r in nodes if r.get("alive", True)]
    print(f"cluster {address}: {len(alive)} node(s) alive, {len(nodes) - len(alive)} dead")
    for node_id, record in nodes:
        state = "alive" if record.get("alive", True) else "dead"
        used = {k: v - record.get("available", {}).get(k, v)
                for k, v in record["resources"].items()}
        print(f"  node {node_id} {record.get('node_ip')} {state}: " + ", ".join(
            _amount(k, used[k], v) for k, v in sorted(record["resources"].items())
            if not k.startswith("node:")))
    live_actors = sum(1 for _, info in actors if info.get("state") != "DEAD")
    print(f"actors alive: {live_actors}")
    print(f"compiled graphs alive: {len(graphs)}")
    _print_gpus()
    return 0


def _amount(name: str, used: float, total: float) -> str:
    if name == "memory":
        return f"memory {used / 2**30:.1f}/{total / 2**30:.1f} GiB"
    return f"{name} {used:g}/{total:g}"


def _cluster_tables(gcs_address: str) -> tuple[list, list, list]:
    from ember._system import cluster_auth
    from ember.dynamic.rpc.messaging import Endpoint
    os.environ.setdefault(cluster_auth.CLUSTER_ENV, "1")
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:   # sends nothing
        probe.connect((gcs_address[len("tcp://"):].rpartition(":")[0], 1))
        ip = probe.getsockname()[0]   # this machine's address on the way to the GCS
    endpoint = Endpoint(f"tcp://{ip}:*", "status")
    endpoint.start()
    try:
        nodes = endpoint.call(gcs_address, "kv_items", "nodes", timeout=10)
        actors = endpoint.call(gcs_address, "kv_items", "actors", timeout=10)
        graphs = endpoint.call(gcs_address, "kv_items", "compiled_graphs", timeout=10)
    finally:
        endpoint.stop()
    return sorted(nodes), actors, graphs


def _machine_status() -> int:
    from ember.dynamic.common.resources import detect_memory
    print(f"CPUs: {os.cpu_count()}")
    print(f"memory: {detect_memory() / 2**30:.1f} GiB")
    _print_gpus()
    return 0


def _print_gpus() -> None:
    from ember.gpu.devices import list_gpus
    gpus = list_gpus()
    print(f"GPUs: {len(gpus)}")
    for gpu in gpus:
        print(f"  [{gpu.index}] {gpu.name}  {gpu.memory_used / 2**30:.1f} / "
              f"{gpu.memory_total / 2**30:.1f} GiB used  {gpu.uuid}")


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", action="store_true", help="start the head (GCS + node)")
    parser.add_argument("--address", help="join the cluster whose head is at HOST:PORT")
    parser.add_argument("--port", type=int, default=6380, help="the head's port (6380)")
    parser.add_argument("--num-cpus", type=float)
    parser.add_argument("--num-gpus", type=float)
    parser.add_argument("--resources", type=_json_dict, help="custom resources, JSON")
    parser.add_argument("--labels", type=_json_dict, help="node labels, JSON")
    parser.add_argument("--node-ip-address", help="the address this node listens on "
                        "(127.0.0.1 by default: a single machine)")
    parser.add_argument("--object-store-memory", type=int)
    parser.add_argument("--block", action="store_true",
                        help="stay in the foreground; stop the node on SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    from ember import __version__
    parser = argparse.ArgumentParser(prog="ember", description="ember command line")
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    commands = parser.add_subparsers(dest="command")
    _node_options(commands.add_parser("start", help="start a cluster node on this machine"))
    commands.add_parser("stop", help="stop the nodes this user started on this machine")
    status_parser = commands.add_parser("status", help="the cluster's nodes and resources, or "
                                        "this machine's CPUs, memory and GPUs")
    status_parser.add_argument("--address", help="the cluster's HOST:PORT")
    args = parser.parse_args(argv)
    handlers: dict[str, Any] = {"start": start, "stop": stop, "status": status}
    if args.command in handlers:
        return handlers[args.command](args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
