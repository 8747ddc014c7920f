"""The kinds of pod a node starts, as ``lab run --kind`` starts them.

A plain pod (pod network, one app container that comes up and stays up) is one kind of many.
A node also starts hostNetwork pods (kube-proxy, CNI agents), pods that fail in each phase,
crash-looping containers, sidecars, pods whose image pull is slow while others start, and
containers that other clients (ctr, nerdctl, moby) run in their own containerd namespaces.
Each kind here is started the way the kubelet starts it, so that each can be recorded and its
analysis checked against the lab's ground truth (docs/lab.md lists them).

Pure data: the driver (``startprof.lab.driver``) turns a kind into CRI calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from startprof.errors import InputError

Role = Literal["init", "sidecar", "app"]
ImageRole = Literal["app", "missing", "slow"]
"""Which image a container runs: the lab's app image; a name the lab registry does not have
(the pull fails); the app image under another name from a throttled registry (a slow pull)."""

MISSING_ENTRYPOINT = "/startprof-no-such-entrypoint"
MISSING_REPOSITORY = "lab/no-such-image"
SLOW_REPOSITORY = "lab/slow-app"
FOREIGN_NAMESPACE = "startprof-ctr"
"""The containerd namespace the ``ctr`` kind runs its container in (CRI's is ``k8s.io``)."""

MAX_RESTARTS = 3
"""Restarts of a crashing container before the driver gives up (the kubelet never does; its
back-off keeps growing, and the pod shows CrashLoopBackOff)."""
BACKOFF_S = 0.1
"""First restart delay, doubled at each restart: the kubelet's 10 s, divided by 100."""
STAY_UP_S = 1.0
"""A started container must still run this long to count as up (the kubelet's view of a
crash loop: a container that exits at once is restarted). Keep in sync with
``startprof.analysis.phases.STAYED_UP_NS``."""


@dataclass(frozen=True)
class ContainerPlan:
    """One container of a pod, in the kubelet's order (init, sidecar, app)."""

    name: str
    role: Role
    image: ImageRole = "app"
    command: tuple[str, ...] = ()
    crashes: int = 0
    """How many of its first attempts exit 1 at once (``app exit 1``); 0 = none does."""

    def args(self, attempt: int) -> list[str]:
        if self.role == "init":
            return ["init"]
        if attempt < self.crashes:
            return ["exit", "1"]
        return []

    @property
    def restarts_on_exit(self) -> bool:
        """Whether an exit is a crash the kubelet restarts (restartPolicy Always), not a run to
        completion (an init container)."""
        return self.role != "init"


@dataclass(frozen=True)
class PodKind:
    name: str
    help: str
    host_network: bool = False
    hostname: bool = True
    """Set the sandbox's hostname. The kubelet leaves it empty for hostNetwork pods: runc
    refuses to set one without a private UTS namespace."""
    image: ImageRole = "app"
    """Image of the app containers (of the first pod only, for ``slow``)."""
    command: tuple[str, ...] = ()
    crashes: int = 0
    """Crashing attempts of the first app container (see ContainerPlan.crashes)."""
    sidecars: int = 0
    foreign: bool = False
    """Also run a container with ctr in another containerd namespace."""

    def containers(self, index: int, apps: int, inits: int) -> list[ContainerPlan]:
        """The containers of the ``index``-th pod of a run."""
        image: ImageRole = self.image if self.image != "slow" or index == 0 else "app"
        out = [ContainerPlan(f"init-{i}", "init") for i in range(inits)]
        out += [ContainerPlan(f"sidecar-{i}", "sidecar") for i in range(self.sidecars)]
        out += [
            ContainerPlan(
                f"app-{i}",
                "app",
                image=image,
                command=self.command,
                crashes=self.crashes if i == 0 else 0,
            )
            for i in range(apps)
        ]
        return out


KINDS: dict[str, PodKind] = {
    k.name: k
    for k in (
        PodKind("plain", "pod network, containers that come up and stay up"),
        PodKind(
            "host-network",
            "NamespaceOption network=NODE and no hostname, like kube-proxy: no CNI runs",
            host_network=True,
            hostname=False,
        ),
        PodKind(
            "runtime-fail",
            "hostNetwork with a hostname: runc refuses the sandbox (RunPodSandbox fails)",
            host_network=True,
        ),
        PodKind(
            "bad-image",
            "an image the registry does not have: PullImage fails",
            image="missing",
        ),
        PodKind(
            "no-entrypoint",
            f"command {MISSING_ENTRYPOINT}: the runtime cannot exec it (StartContainer fails)",
            command=(MISSING_ENTRYPOINT,),
        ),
        PodKind(
            "crash-loop",
            f"app-0 exits 1 at every start; restarted {MAX_RESTARTS} times with back-off",
            crashes=MAX_RESTARTS + 1,
        ),
        PodKind(
            "crash-then-up",
            "app-0 exits 1 at its first two starts, then stays up",
            crashes=2,
        ),
        PodKind(
            "sidecar",
            "a restartable init container (sidecar-0) between init and app containers",
            sidecars=1,
        ),
        PodKind(
            "slow-pull",
            "the first pod pulls its image from a throttled registry while the others start",
            image="slow",
        ),
        PodKind(
            "ctr",
            f"beside the pods, a container run by ctr in containerd namespace {FOREIGN_NAMESPACE}",
            foreign=True,
        ),
    )
}


def pod_kind(name: str) -> PodKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"unknown pod kind {name!r}; valid: {', '.join(KINDS)}") from None
