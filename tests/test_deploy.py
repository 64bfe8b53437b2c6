"""The deployment recipes in deploy/ parse and say what the ember CLI and runtime need."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
SBATCH = DEPLOY / "slurm" / "ember.sbatch"
POD_KINDS = ("Deployment", "StatefulSet")
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


# --- Kubernetes --------------------------------------------------------------------------

def load_documents() -> list[dict]:
    """Every YAML document under deploy/kubernetes (empty documents left out)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str) -> dict:
    """The only document of ``kind``."""
    found = [d for d in load_documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    """The pod spec of a Deployment or StatefulSet."""
    return workload["spec"]["template"]["spec"]


def ember_container(workload: dict) -> dict:
    """The container of ``workload`` that runs ``ember start``."""
    found = [c for c in pod_spec(workload)["containers"]
             if c.get("command", [])[:1] == ["ember"] and c.get("args", [])[:1] == ["start"]]
    assert len(found) == 1, f"{workload['metadata']['name']}: no single `ember start` container"
    return found[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``; None if absent."""
    for i, arg in enumerate(args):
        if arg == name:
            assert i + 1 < len(args), f"{name} has no value"
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def env_var(container: dict, name: str) -> dict:
    """The ``env`` entry ``name`` of ``container``."""
    found = [e for e in container.get("env", []) if e["name"] == name]
    assert len(found) == 1, f"{container['name']}: expected one env entry {name}"
    return found[0]


def quantity(text: str) -> int:
    """Bytes in a Kubernetes binary quantity such as ``4Gi`` (or a plain byte count)."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|)", str(text))
    assert match, f"unexpected quantity {text!r}"
    return int(match[1]) * QUANTITY[match[2]]


def head_service() -> dict:
    """The Service in front of the head's bootstrap port (it has a cluster IP)."""
    found = [d for d in load_documents()
             if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"]
    assert len(found) == 1, "expected one non-headless Service (the head's)"
    return found[0]


def workloads() -> list[dict]:
    """The head Deployment and the worker StatefulSet."""
    return [one("Deployment"), one("StatefulSet")]


def test_every_document_parses_and_has_kind_and_name():
    """Each manifest file parses as YAML; every document has apiVersion, kind and a name."""
    files = sorted(K8S.glob("*.yaml"))
    assert files, "no manifests in deploy/kubernetes"
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name} holds no document"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: {doc}"
            assert doc.get("metadata", {}).get("name"), f"{path.name}: a {doc['kind']} unnamed"


def test_kinds_present():
    """The recipe has a Deployment, a StatefulSet, a Secret and at least one Service."""
    kinds = [d["kind"] for d in load_documents()]
    for kind in ("Deployment", "StatefulSet", "Secret"):
        assert kinds.count(kind) == 1, f"{kind}: {kinds.count(kind)}"
    assert "Service" in kinds
    assert one("Deployment")["spec"]["replicas"] == 1, "there is one head"


def test_selectors_match_pod_labels():
    """Each workload's selector, and each Service's, picks that workload's pods."""
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
    head_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert head_service()["spec"]["selector"].items() <= head_labels.items()


def test_every_pod_mounts_memory_backed_dev_shm():
    """Every pod mounts an emptyDir with medium Memory at /dev/shm in its ember container."""
    for workload in workloads():
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = [m for m in ember_container(workload).get("volumeMounts", [])
                  if m["mountPath"] == "/dev/shm"]
        assert len(mounts) == 1, f"{workload['metadata']['name']}: /dev/shm not mounted"
        volume = volumes.get(mounts[0]["name"])
        assert volume is not None, f"{workload['metadata']['name']}: the mount names no volume"
        assert volume.get("emptyDir", {}).get("medium") == "Memory", volume


def test_object_store_fits_in_dev_shm_and_dev_shm_in_memory_limit():
    """--object-store-memory < the /dev/shm sizeLimit < the container's memory limit."""
    for workload in workloads():
        name = workload["metadata"]["name"]
        container = ember_container(workload)
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
        shm_size = quantity(volume["emptyDir"]["sizeLimit"])
        store = flag(container["args"], "--object-store-memory")
        assert store is not None, f"{name}: --object-store-memory not set"
        assert int(store) < shm_size, f"{name}: store {store} >= /dev/shm {shm_size}"
        limit = quantity(container["resources"]["limits"]["memory"])
        assert shm_size < limit, f"{name}: /dev/shm is charged to the pod's memory limit"


def test_token_comes_from_the_secret():
    """EMBER_AUTH_TOKEN in every container comes from a key the Secret defines."""
    secret = one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for workload in workloads():
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            ref = env_var(container, "EMBER_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], container["name"]
            assert ref["key"] in keys, f"{container['name']}: key {ref['key']!r} not in {keys}"


def test_secret_holds_an_obvious_placeholder():
    """The Secret in the repository is a placeholder, never a real-looking token."""
    values = one("Secret").get("stringData", {}).values()
    assert values and all("REPLACE" in v for v in values)


def test_head_runs_ember_start_head_block_on_the_service_port():
    """The head runs `ember start --head --port P ... --block`, P being the Service's port."""
    args = ember_container(one("Deployment"))["args"]
    assert "--head" in args and "--address" not in args
    assert "--block" in args
    port = flag(args, "--port")
    assert port is not None, "--port not given"
    ports = head_service()["spec"]["ports"]
    assert len(ports) == 1
    assert int(port) == ports[0]["port"] == ports[0].get("targetPort", ports[0]["port"]) == 6380


def test_workers_join_the_head_service_with_block():
    """Workers run `ember start --address <Service name>:<port> ... --block`."""
    service = head_service()
    expected = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    args = ember_container(one("StatefulSet"))["args"]
    assert "--head" not in args and "--block" in args
    assert flag(args, "--address") == expected


def test_statefulset_has_its_headless_service():
    """The StatefulSet names a headless Service that exists and selects its pods."""
    statefulset = one("StatefulSet")
    services = {d["metadata"]["name"]: d for d in load_documents() if d["kind"] == "Service"}
    governing = services.get(statefulset["spec"]["serviceName"])
    assert governing is not None, "the StatefulSet's serviceName names no Service"
    assert governing["spec"].get("clusterIP") == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert governing["spec"]["selector"].items() <= labels.items()


def test_node_ip_address_is_the_pod_ip():
    """--node-ip-address is $(POD_IP), and POD_IP comes from the downward API status.podIP."""
    for workload in workloads():
        container = ember_container(workload)
        assert flag(container["args"], "--node-ip-address") == "$(POD_IP)"
        source = env_var(container, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"]
        assert source == "status.podIP"


def test_num_cpus_is_the_cpu_limit():
    """--num-cpus comes from the container's own CPU limit (not the host's core count)."""
    for workload in workloads():
        container = ember_container(workload)
        var = re.fullmatch(r"\$\((\w+)\)", flag(container["args"], "--num-cpus") or "")
        assert var, "--num-cpus is not a $(VAR)"
        ref = env_var(container, var[1])["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and ref["containerName"] == container["name"]
        assert "cpu" in container["resources"]["limits"]


def test_readiness_probes_ask_ember_status():
    """Each ember container's readiness probe runs `ember status --address <head>`."""
    service = head_service()
    port = service["spec"]["ports"][0]["port"]
    for workload in workloads():
        command = " ".join(ember_container(workload)["readinessProbe"]["exec"]["command"])
        assert "ember status --address" in command, command
        assert re.search(rf"--address \S*:{port}\b", command), command
    worker_probe = " ".join(ember_container(one("StatefulSet"))["readinessProbe"]["exec"]["command"])
    assert f"{service['metadata']['name']}:{port}" in worker_probe


def test_no_service_links_in_pods():
    """Pods turn off service links, which would inject EMBER_HEAD_* variables."""
    for workload in workloads():
        assert pod_spec(workload).get("enableServiceLinks") is False


# --- SLURM -------------------------------------------------------------------------------

def sbatch_commands() -> list[str]:
    """The script's lines without comments, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", SBATCH.read_text())
    return [line.split(" #", 1)[0] for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_sbatch_syntax():
    """`bash -n` accepts deploy/slurm/ember.sbatch."""
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_starts_head_and_workers_with_block():
    """The script runs `ember start --head` and `ember start --address`, each with --block."""
    starts = [line for line in sbatch_commands() if "ember start" in line]
    assert any("ember start --head" in line for line in starts)
    assert any("ember start --address" in line for line in starts)
    for line in starts:
        assert "--block" in line, line
        assert line.split()[0] == "srun", f"not a job step: {line}"


def test_sbatch_has_directives_and_a_cleanup_trap():
    """The script has #SBATCH defaults and a trap that ends the srun steps on exit."""
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --nodes=\d+", text, re.M)
    assert re.search(r"^#SBATCH --ntasks-per-node=1$", text, re.M)
    handlers = [m[1] for line in sbatch_commands()
                if (m := re.match(r"\s*trap (\w+) .*\bEXIT\b", line))]
    assert handlers, "no `trap HANDLER EXIT`"
    handler = handlers[0]
    body = re.search(rf"^{handler}\(\) {{\n(.*?)^}}", text, re.M | re.S)
    assert body and "kill" in body[1], f"{handler} kills nothing"
    assert os.stat(SBATCH).st_mode & stat.S_IXUSR


# A fake SLURM and ember: srun logs and runs its command; `ember start` logs and waits for
# SIGTERM; `ember status` answers once a head has started (unless told otherwise); the
# script's wait for N nodes (`python - N TIMEOUT`) waits for N logged starts, as the real one
# waits for N nodes to join, so that no SIGTERM comes before a fake node set its trap.
FAKES = {
    "scontrol": 'printf "n1\\nn2\\nn3\\n"\n',
    "getent": 'case "$2" in n1) echo "10.0.0.1 STREAM n1";; n2) echo "10.0.0.2 STREAM n2";;'
              ' n3) echo "10.0.0.3 STREAM n3";; esac\n',
    "srun": 'echo "srun $*" >>"$LOG"\n'
            'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\n'
            'exec "$@"\n',
    "ember": textwrap.dedent("""\
        if [[ "$1" == status ]]; then
            [[ -z "${FAKE_HEAD_NEVER_ANSWERS:-}" && -e "$LOG.head" ]]; exit
        fi
        trap 'echo "stopped $2 $3" >>"$LOG"; exit 0' TERM
        echo "$* token=${EMBER_AUTH_TOKEN:-none}" >>"$LOG"
        [[ "$2" == --head ]] && { [[ -n "${FAKE_HEAD_DIES:-}" ]] && exit 1; touch "$LOG.head"; }
        while :; do sleep 0.05; done
        """),
    "python": textwrap.dedent("""\
        [[ "$1" == -c ]] && exec "$REAL_PYTHON" "$@"
        echo "python $*" >>"$LOG"; cat >/dev/null
        if [[ "$1" == - && "${2:-}" =~ ^[0-9]+$ ]]; then
            for _ in $(seq 200); do
                (($(grep -c "^start " "$LOG") >= $2)) && exit 0; sleep 0.05
            done
            exit 1
        fi
        """),
}


def run_sbatch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the sbatch script under the fakes; return the result and the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "HOME": str(tmp_path),
                "REAL_PYTHON": sys.executable, "SLURM_JOB_NODELIST": "n[1-3]",
                "SLURM_CPUS_ON_NODE": "8", "START_TIMEOUT": "5", **env}
    result = subprocess.run(["bash", str(SBATCH), *args], env=full_env, capture_output=True,
                            text=True, timeout=30)
    return result, log.read_text()


@pytest.mark.timeout(60)
def test_sbatch_under_fake_slurm_starts_joins_runs_and_stops(tmp_path):
    """Under a fake srun: head on n1, workers on n2 and n3 join it, the driver runs, all stop."""
    result, log = run_sbatch(tmp_path, "train.py", "--epochs", "2", SLURM_GPUS_ON_NODE="4")
    assert result.returncode == 0, result.stderr + log
    lines = log.splitlines()
    token = re.search(r"token=(\S+)", log)[1]
    assert re.fullmatch(r"[0-9a-f]{64}", token), "the script made no token"
    starts = [line for line in lines if line.startswith("start ")]
    assert starts == [
        f"start --head --node-ip-address 10.0.0.1 --port 6380 --num-cpus 8 --num-gpus 4 "
        f"--block token={token}",
        f"start --address 10.0.0.1:6380 --node-ip-address 10.0.0.2 --num-cpus 8 --num-gpus 4 "
        f"--block token={token}",
        f"start --address 10.0.0.1:6380 --node-ip-address 10.0.0.3 --num-cpus 8 --num-gpus 4 "
        f"--block token={token}",
    ]
    assert [line for line in lines if line.startswith("srun")][0].endswith(
        "-w n1 ember start --head --node-ip-address 10.0.0.1 --port 6380 --num-cpus 8 "
        "--num-gpus 4 --block")
    assert "python train.py --epochs 2" in lines
    assert sorted(line for line in lines if line.startswith("stopped")) == [
        "stopped --address 10.0.0.1:6380", "stopped --address 10.0.0.1:6380",
        "stopped --head --node-ip-address"]


@pytest.mark.timeout(60)
def test_sbatch_fails_clearly_when_the_head_does_not_answer(tmp_path):
    """A head that never answers ends the job non-zero within START_TIMEOUT, head stopped."""
    result, log = run_sbatch(tmp_path, "train.py", FAKE_HEAD_NEVER_ANSWERS="1",
                             START_TIMEOUT="1", EMBER_AUTH_TOKEN="given")
    assert result.returncode != 0
    assert "did not answer within 1s" in result.stderr
    assert "token=given" in log, "a token from the environment is kept"
    assert "start --address" not in log and "python train.py" not in log
    assert "stopped --head --node-ip-address" in log


@pytest.mark.timeout(60)
def test_sbatch_fails_at_once_when_the_head_exits(tmp_path):
    """A head step that ends before answering fails the job with a message, no waiting."""
    result, log = run_sbatch(tmp_path, "train.py", FAKE_HEAD_DIES="1", START_TIMEOUT="60")
    assert result.returncode != 0
    assert "exited before it answered" in result.stderr
    assert "python train.py" not in log
