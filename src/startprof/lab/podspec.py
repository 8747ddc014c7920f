"""A Kubernetes pod template (a DaemonSet's, a Deployment's or a Pod's) started on the lab as the
kubelet would start it: ``deploy/daemonset.yaml`` runs here as a pod, privileges, host
namespaces, hostPath mounts, downward-API environment and all.

The conversion follows the kubelet's (``pkg/kubelet/kuberuntime``: ``generatePodSandboxConfig``,
``generateContainerConfig``, ``makeMounts``; ``$(VAR)`` expansion of env, command and args;
``spec.nodeName`` and friends from the downward API; CPU shares, quota and memory limit from
requests and limits; a critical priority class gets the OOM score adjustment -997). What needs
a cluster is left out and named: no service-account token, no cluster DNS (``dnsPolicy``), no
``/etc/hosts`` file, no scheduling (tolerations, priority). Fields outside what is converted are
refused with their names rather than ignored.

The lab's containerd does not live where a node's does: ``relocate`` moves a host path prefix
(``/run/containerd`` -> the lab's run directory) in hostPath volumes, mount paths, command,
args and env values alike, so the CRI socket the agent is told about is the path the kernel's
socket table shows, as on a node.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from startprof.cri.proto import api_pb2 as api
from startprof.errors import InputError
from startprof.lab.cri import CriClient
from startprof.lab.host import remove_pod_cgroups
from startprof.lab.kubelet import pod_annotations, pod_cgroup_parent, pod_labels, pod_log_directory
from startprof.lab.paths import LabPaths
from startprof.lab.teardown import quiet_call

CPU_PERIOD = 100_000
MIN_SHARES = 2
CRITICAL_CLASSES = ("system-node-critical", "system-cluster-critical")
CRITICAL_OOM_SCORE_ADJ = -997
POD_KEYS = {
    "hostPID", "hostNetwork", "hostIPC", "dnsPolicy", "priorityClassName", "tolerations",
    "terminationGracePeriodSeconds", "containers", "volumes", "nodeSelector",
}  # fmt: skip
CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "ports", "securityContext",
    "resources", "volumeMounts",
}  # fmt: skip
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class PodSpecPod:
    """The CRI configs of one pod of a template, ready for RunPodSandbox and CreateContainer."""

    name: str
    namespace: str
    uid: str
    sandbox: api.PodSandboxConfig
    containers: tuple[api.ContainerConfig, ...]
    grace_s: int


def pod_template(doc: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    """(name, namespace, pod spec) of a Pod, or of the pod template of a workload."""
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    if kind == "Pod":
        spec = doc.get("spec")
    elif kind in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
        spec = ((doc.get("spec") or {}).get("template") or {}).get("spec")
    else:
        raise InputError(f"a {kind or 'document without kind'} has no pod template")
    if not isinstance(spec, Mapping) or not spec.get("containers"):
        raise InputError(f"{kind} {meta.get('name', '?')}: no containers in its pod spec")
    return str(meta.get("name") or "pod"), str(meta.get("namespace") or "default"), spec


def load_template(path: Path) -> tuple[str, str, Mapping[str, Any]]:
    """The first pod template in a manifest file (other documents, e.g. a Namespace, skipped)."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, Mapping)]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None
    for doc in docs:
        if doc.get("kind") not in (None, "Namespace", "ConfigMap", "Service", "ServiceAccount"):
            return pod_template(doc)
    raise InputError(f"{path}: no Pod, DaemonSet or Deployment in it")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names replaced, ``$$`` -> ``$``, others kept."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(one, text)


def _quantity(value: object, cpu: bool) -> int:
    """A Kubernetes quantity as millicores (cpu) or bytes."""
    text = str(value).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}  # fmt: skip
    try:
        if cpu:
            return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * factor)
        return int(float(text))
    except ValueError:
        raise InputError(f"not a quantity: {value!r}") from None


def _unsupported(what: str, keys: object, allowed: set[str]) -> None:
    extra = sorted(set(keys if isinstance(keys, Mapping) else ()) - allowed)
    if extra:
        raise InputError(f"{what}: the lab does not convert {', '.join(extra)}")


def _replace_path(new: str, m: re.Match[str]) -> str:
    return m.group(1) + new


@dataclass
class _Context:
    name: str
    namespace: str
    uid: str
    node: str
    relocate: Mapping[str, str]
    env_override: Mapping[str, str]

    def moved(self, text: str) -> str:
        """``text`` with a relocated path prefix replaced, as a whole value or after ``=``
        (``--cri-socket=/run/containerd/containerd.sock``)."""
        for old, new in self.relocate.items():
            pattern = r"(^|=)" + re.escape(old.rstrip("/")) + r"(?=/|$)"
            text = re.sub(pattern, partial(_replace_path, new.rstrip("/")), text)
        return text

    def field_ref(self, path: str) -> str:
        values = {
            "spec.nodeName": self.node,
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
        }
        if path not in values:
            raise InputError(f"env fieldRef {path}: the lab knows {', '.join(values)}")
        return values[path]


def _env(spec: Mapping[str, Any], ctx: _Context) -> dict[str, str]:
    """A container's environment in order, each value expanded against those before it."""
    out: dict[str, str] = {}
    for var in spec.get("env") or ():
        name = str(var["name"])
        if "valueFrom" in var:
            ref = (var["valueFrom"] or {}).get("fieldRef")
            if not ref:
                raise InputError(f"env {name}: only valueFrom.fieldRef is converted")
            value = ctx.field_ref(str(ref.get("fieldPath")))
        else:
            value = expand(str(var.get("value", "")), out)
        out[name] = ctx.moved(value)
    for name, value in ctx.env_override.items():
        out[name] = value
    return out


def _mounts(
    container: Mapping[str, Any], volumes: Mapping[str, str], ctx: _Context
) -> list[api.Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or ():
        host = volumes.get(str(vm["name"]))
        if host is None:
            raise InputError(f"volumeMount {vm['name']}: only hostPath volumes are converted")
        mounts.append(
            api.Mount(
                container_path=ctx.moved(str(vm["mountPath"])),
                host_path=host,
                readonly=bool(vm.get("readOnly", False)),
                propagation=api.PROPAGATION_PRIVATE,
            )
        )
    return mounts


def _resources(container: Mapping[str, Any], critical: bool) -> api.LinuxContainerResources:
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    shares = MIN_SHARES if cpu_request is None else _quantity(cpu_request, True) * 1024 // 1000
    out = api.LinuxContainerResources(cpu_period=CPU_PERIOD, cpu_shares=max(MIN_SHARES, shares))
    if "cpu" in limits:
        out.cpu_quota = _quantity(limits["cpu"], True) * CPU_PERIOD // 1000
    if "memory" in limits:
        out.memory_limit_in_bytes = _quantity(limits["memory"], False)
    # the kubelet's burstable formula needs the node's memory; a critical pod is fixed
    out.oom_score_adj = CRITICAL_OOM_SCORE_ADJ if critical else 1000
    return out


def pod_configs(
    template: tuple[str, str, Mapping[str, Any]],
    paths: LabPaths,
    node: str,
    relocate: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> PodSpecPod:
    """The kubelet's CRI configs for one pod of ``template`` on node ``node``."""
    owner, namespace, spec = template
    _unsupported("pod spec", spec, POD_KEYS)
    uid = str(uuid.uuid4())
    name = f"{owner}-{uid[:5]}"
    ctx = _Context(name, namespace, uid, node, relocate or {}, env or {})
    host_pid, host_network = bool(spec.get("hostPID")), bool(spec.get("hostNetwork"))
    ns = api.NamespaceOption(
        network=api.NODE if host_network else api.POD,
        pid=api.NODE if host_pid else api.CONTAINER,
        ipc=api.NODE if spec.get("hostIPC") else api.POD,
    )
    containers = list(spec["containers"])
    privileged = any((c.get("securityContext") or {}).get("privileged") for c in containers)
    volumes: dict[str, str] = {}
    for vol in spec.get("volumes") or ():
        if "hostPath" in vol:
            volumes[str(vol["name"])] = ctx.moved(str(vol["hostPath"]["path"]))
    labels = pod_labels(name, namespace, uid)
    ports = [
        api.PortMapping(
            protocol=api.TCP if p.get("protocol", "TCP") == "TCP" else api.UDP,
            container_port=int(p["containerPort"]),
            host_port=int(p.get("hostPort", p["containerPort"] if host_network else 0)),
        )
        for c in containers
        for p in c.get("ports") or ()
    ]
    sandbox = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname="" if host_network else name,
        log_directory=pod_log_directory(paths, name, namespace, uid),
        dns_config=api.DNSConfig(),
        port_mappings=ports,
        labels=labels,
        annotations=pod_annotations(),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=pod_cgroup_parent(uid),
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=ns,
                privileged=privileged,
                seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined),
            ),
        ),
    )
    critical = spec.get("priorityClassName") in CRITICAL_CLASSES
    configs = []
    for c in containers:
        _unsupported(f"container {c.get('name')}", c, CONTAINER_KEYS)
        _unsupported(f"container {c.get('name')} securityContext", c.get("securityContext"),
                     {"privileged"})  # fmt: skip
        variables = _env(c, ctx)
        cname = str(c["name"])
        configs.append(
            api.ContainerConfig(
                metadata=api.ContainerMetadata(name=cname, attempt=0),
                image=api.ImageSpec(image=str(c["image"])),
                command=[ctx.moved(expand(str(a), variables)) for a in c.get("command") or ()],
                args=[ctx.moved(expand(str(a), variables)) for a in c.get("args") or ()],
                envs=[api.KeyValue(key=k, value=v.encode()) for k, v in variables.items()],
                mounts=_mounts(c, volumes, ctx),
                labels={**labels, "io.kubernetes.container.name": cname},
                annotations={"io.kubernetes.container.restartCount": "0"},
                log_path=f"{cname}/0.log",
                linux=api.LinuxContainerConfig(
                    resources=_resources(c, critical),
                    security_context=api.LinuxContainerSecurityContext(
                        privileged=bool((c.get("securityContext") or {}).get("privileged")),
                        namespace_options=ns,
                        seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined),
                    ),
                ),
            )
        )
    grace = int(spec.get("terminationGracePeriodSeconds", 30))
    return PodSpecPod(name, namespace, uid, sandbox, tuple(configs), grace)


@dataclass
class RunningPod:
    """A template's pod started on the lab; ``stop()`` tears it down the kubelet's way."""

    client: CriClient
    pod: PodSpecPod
    sandbox_id: str = ""
    container_ids: list[str] = field(default_factory=list)

    def log_path(self, index: int = 0) -> Path:
        cfg = self.pod.containers[index]
        return Path(self.pod.sandbox.log_directory) / cfg.log_path

    def exit_codes(self) -> list[int | None]:
        """Each container's exit code; None while it runs."""
        out: list[int | None] = []
        for cid in self.container_ids:
            status = self.client.container_status(cid).status
            out.append(status.exit_code if status.state == api.CONTAINER_EXITED else None)
        return out

    def remove_logs(self) -> None:
        shutil.rmtree(self.pod.sandbox.log_directory, ignore_errors=True)

    def stop(self) -> list[int | None]:
        """StopContainer with the grace period (SIGTERM, then SIGKILL), then remove the pod
        and its cgroups (its logs stay until ``remove_logs``); the containers' exit codes as
        they stopped."""
        for cid in reversed(self.container_ids):
            quiet_call(partial(self.client.stop_container, cid, self.pod.grace_s))
        codes = self.exit_codes()
        for cid in reversed(self.container_ids):
            quiet_call(partial(self.client.remove_container, cid))
        if self.sandbox_id:
            quiet_call(lambda: self.client.stop_pod_sandbox(self.sandbox_id))
            quiet_call(lambda: self.client.remove_pod_sandbox(self.sandbox_id))
        remove_pod_cgroups(self.pod.sandbox.linux.cgroup_parent)
        return codes


def start_pod(
    client: CriClient, pod: PodSpecPod, handler: str, on_step: Callable[[str], None] = print
) -> RunningPod:
    """RunPodSandbox, then per container ImageStatus (IfNotPresent: the image must be there),
    CreateContainer and StartContainer; a failure tears down what was made."""
    running = RunningPod(client, pod)
    try:
        running.sandbox_id = client.run_pod_sandbox(pod.sandbox, handler).pod_sandbox_id
        for cfg in pod.containers:
            if not client.image_status(cfg.image.image).HasField("image"):
                raise InputError(
                    f"image {cfg.image.image} is not in the lab's containerd",
                    fix="startprof lab daemonset builds and imports the agent's image",
                )
            cid = client.create_container(running.sandbox_id, cfg, pod.sandbox).container_id
            running.container_ids.append(cid)
            client.start_container(cid)
            on_step(f"started {pod.namespace}/{pod.name} container {cfg.metadata.name}")
    except BaseException:
        running.stop()
        raise
    return running
