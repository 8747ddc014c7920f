"""The agent's incremental core: a bounded window of events, analysed again and again, that
hands each pod start out once, as soon as it is over.

No kernel and no network here: the live agent (``startprof.agent``) feeds it what the probes
deliver, and the unit tests replay stored recordings through it in time order. The analysis is
the one ``startprof analyze`` runs (``analysis.analyze``), over the window instead of a file, so
a pod's trace is the one ``export`` gives from a recording of the same events.

When is a pod start over? The analysis cannot know how many containers a pod will have (the
kubelet creates them one after another), so a pod is *done* once the analysis calls it ``ok``,
``restarted`` or ``failed`` and nothing has happened to it for ``settle_s``. A pod the analysis
still calls incomplete is given up ``pod_timeout_s`` after its start, and sent as it is.

When is the window analysed? Only when an analysis can decide something: when a pending pod that
looked over settles or reaches its timeout, ``settle_s`` after a CRI reply that can end a pod start
(StartContainer, a failed call, or a call not named yet), and at most ``review_s`` after other
activity (a new pod becomes pending, and so safe from pruning). The analysis is the whole
``analyze`` with a cost that hardly depends on the window's size (most of it is per call, not
per event), so what the agent saves is analyses: between these moments a step only prunes.

What the window keeps: every event from ``horizon_s`` before the start of the oldest pod not
yet sent, and from ``horizon_s`` before the last analysis in any case (a pod becomes visible to
the analysis only when enough of it has arrived, e.g. its first CNI exec or its RunPodSandbox
reply).
Everything older goes, except the few events that describe long-lived state rather than a
moment: ``proc`` (processes alive at start-up or found after a containerd restart) and
``cri_accept`` (the CRI connections).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import pandas as pd

from startprof.analysis import Source, analyze
from startprof.analysis.cri_naming import name_calls
from startprof.analysis.model import NO_CONTAINER_SEEN, STILL_STARTING, Analysis, Pod

SETTLE_S: Final = 0.3
POD_TIMEOUT_S: Final = 120.0
HORIZON_S: Final = 0.5
REVIEW_S: Final = 1.0
"""Longest that activity which cannot end a pod start waits for an analysis."""
FOLLOW_S: Final = 0.3
"""How often the window is analysed while pods are pending and their starts move on (execs,
replies): through a burst of pod starts the agent analyses as often as it did before it
analysed only when a decision could be due (docs/agent.md has the paired live runs)."""
EMITTED_MEMORY: Final = 10_000
"""Sandbox ids remembered as sent; far more than a node starts within a window's reach."""
LONG_LIVED_KINDS: Final = ("proc", "cri_accept")
CLOSING_METHOD: Final = "/StartContainer"
"""A pod start is over with a StartContainer reply, or with a failed call of any method."""
GIVEN_UP = "given up after {timeout:g}s"
SHUT_DOWN = "the agent stopped while it was starting"


@dataclass(frozen=True)
class Emitted:
    """A pod start handed out, and why now."""

    pod: Pod
    reason: str
    """``done``, ``timeout`` or ``shutdown``."""
    done_at_ns: int
    """Monotonic ns of the analysis that decided it."""


@dataclass
class WindowStats:
    events: int = 0
    """Events in the window now."""
    received: int = 0
    pruned: int = 0
    analyses: int = 0
    steps: int = 0
    emitted: int = 0
    unnamed_calls: int = 0
    """CRI calls that reached the analysis without a method and that it could not name,
    counted once per analysis of a new window (the same call may count in several)."""


class IncrementalAnalyzer:
    """``add`` event frames as they arrive, ``step`` regularly, ``flush`` at the end."""

    def __init__(
        self,
        *,
        host: str,
        kernel: str,
        clock_offset_ns: int,
        start_monotonic_ns: int,
        settle_s: float = SETTLE_S,
        pod_timeout_s: float = POD_TIMEOUT_S,
        horizon_s: float = HORIZON_S,
        review_s: float = REVIEW_S,
        follow_s: float = FOLLOW_S,
    ) -> None:
        self.host = host
        self.kernel = kernel
        self.clock_offset_ns = clock_offset_ns
        self.start_monotonic_ns = start_monotonic_ns
        self.settle_ns = int(settle_s * 1e9)
        self.pod_timeout_s = pod_timeout_s
        self.horizon_ns = int(horizon_s * 1e9)
        self.review_ns = int(review_s * 1e9)
        self.follow_ns = int(follow_s * 1e9)
        self.stats = WindowStats()
        self.drops = 0
        self._chunks: list[pd.DataFrame] = []
        self._fresh = False
        """An exec, or a reply that can end a pod start, arrived since the last analysis."""
        self._pending: dict[str, Pod] = {}
        """Pods the last analysis saw and that are not sent yet, by sandbox id."""
        self._emitted: OrderedDict[str, None] = OrderedDict()
        self._analysed_ns = start_monotonic_ns
        """Monotonic ns of the last analysis (the agent's start before the first)."""
        self._closing: list[int] = []
        """Monotonic ns at which CRI replies that can end a pod start have settled."""
        self._news = False
        """Any event arrived since the last analysis."""

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        self._chunks.append(frame)
        self.stats.received += len(frame)
        self.stats.events += len(frame)
        self._news = True
        kind = frame["kind"]
        if bool((kind == "exec").any()):
            self._fresh = True
        calls = frame[kind == "cri_call"]
        if len(calls) and "method" in calls:
            self._note_replies(calls)

    def _note_replies(self, calls: pd.DataFrame) -> None:
        """Which replies can end a pod start, and when they settle: a StartContainer reply, or
        a failed call. An unnamed call (on an aged connection) counts when the decoder's shape
        candidates include StartContainer, or it failed: the kubelet's PLEG relisting
        (ListPodSandbox, ListContainers, ...) has shapes of its own and never brings one."""
        method = calls["method"].astype("string")
        failed = (calls["grpc_status"].astype("string") != "OK").fillna(False)
        ended = calls["end_ns"].where(calls["end_ns"].notna(), calls["ts_ns"])
        named = method.str.endswith(CLOSING_METHOD).fillna(False)
        unnamed = method.isna() & calls["attrs"].map(self._may_start_container).astype(bool)
        closing = named | unnamed | failed
        if bool(closing.any()):
            self._closing.extend(int(t) + self.settle_ns for t in ended[closing].dropna())
            self._fresh = True

    def _may_start_container(self, attrs: object) -> bool:
        """Whether an unnamed call's shape fits StartContainer (an id in, nothing out), as the
        decoder's candidates say, for an id not of a pod already sent (the same shape is
        StopPodSandbox's and RemovePodSandbox's at its tear-down). A call the decoder kept no
        candidates for may be anything."""
        try:
            unnamed = json.loads(attrs).get("unnamed") if isinstance(attrs, str) else None
        except ValueError:
            return True
        if not isinstance(unnamed, dict) or not isinstance(unnamed.get("candidates"), dict):
            return True
        candidates = unnamed["candidates"]
        if CLOSING_METHOD[1:] not in candidates:
            return False
        ids = {v for fields in candidates.values() if isinstance(fields, dict)
               for v in fields.values() if isinstance(v, str)}  # fmt: skip
        return not any(i in self._emitted for i in ids)

    @property
    def pending(self) -> tuple[Pod, ...]:
        return tuple(self._pending.values())

    def next_due_ns(self) -> int | None:
        """Monotonic ns of the next moment an analysis can decide something (see the module's
        docstring); None while nothing is pending and nothing new arrived.

        The agent steps then rather than at its next regular interval, so a finished pod waits
        ``settle_s`` and one analysis, not ``settle_s`` plus up to an interval.
        """
        due = list(self._closing)
        for p in self._pending.values():
            if _still_starting(p):
                due.append(p.start_ns - self.clock_offset_ns + int(self.pod_timeout_s * 1e9))
            else:
                due.append(p.end_ns - self.clock_offset_ns + self.settle_ns)
        if self._fresh and self._pending:
            due.append(self._analysed_ns + self.follow_ns)
        if self._fresh or (self._news and self._pending):
            # a pending pod still starting may also move on without a reply that shows it
            # (its events late behind a busy agent): never more than review_s without a look
            due.append(self._analysed_ns + self.review_ns)
        return min(due) if due else None

    def was_emitted(self, sandbox_id: str) -> bool:
        return sandbox_id in self._emitted

    def step(self, now_ns: int) -> list[Emitted]:
        """Analyse the window if an analysis can decide something now; the pods whose start
        is over."""
        self.stats.steps += 1
        due = self.next_due_ns()
        if due is None or now_ns < due:
            self._prune(now_ns)
            return []
        return self._decide(now_ns)

    def _decide(self, now_ns: int) -> list[Emitted]:
        analysis = self._analyze(now_ns)
        out: list[Emitted] = []
        now_wall = now_ns + self.clock_offset_ns
        self._pending = {}
        for pod in analysis.pods:
            if pod.sandbox_id in self._emitted:
                continue
            if pod.status != "incomplete" and now_wall - pod.end_ns >= self.settle_ns:
                out.append(Emitted(pod, "done", now_ns))
            elif pod.status == "incomplete" and now_wall - pod.start_ns >= self.pod_timeout_s * 1e9:
                reason = GIVEN_UP.format(timeout=self.pod_timeout_s)
                out.append(Emitted(_incomplete(pod, reason), "timeout", now_ns))
            elif pod.status == "incomplete" and not _still_starting(pod):
                # started before the agent, or events lost: no later event makes it whole
                if now_wall - pod.end_ns >= self.settle_ns:
                    out.append(Emitted(pod, "done", now_ns))
                else:
                    self._pending[pod.sandbox_id] = pod
            else:
                self._pending[pod.sandbox_id] = pod
        self._remember(out)
        self._prune(now_ns)
        return out

    def flush(self, now_ns: int) -> list[Emitted]:
        """Every pod start not sent yet, finished or not (the agent is stopping)."""
        out = self._decide(now_ns)
        rest = [
            Emitted(
                _incomplete(p, SHUT_DOWN) if p.status == "incomplete" else p, "shutdown", now_ns
            )
            for p in self._pending.values()
        ]
        self._pending = {}
        self._remember(rest)
        return out + rest

    def _analyze(self, now_ns: int) -> Analysis:
        window = self._window()
        self._fresh = self._news = False
        self._analysed_ns = now_ns
        self._closing = [t for t in self._closing if t > now_ns]
        self.stats.analyses += 1
        source = Source(
            name="agent",
            host=self.host,
            kernel=self.kernel,
            clock_offset_ns=self.clock_offset_ns,
            start_monotonic_ns=self.start_monotonic_ns,
            end_monotonic_ns=now_ns,
            drops=self.drops,
            complete=False,
            events=window,
        )
        # named here once, for the count; analyze() then finds nothing left to name
        named, naming = name_calls(window)
        self.stats.unnamed_calls = naming.unnamed - naming.named
        return analyze([replace(source, events=named)])

    def _window(self) -> pd.DataFrame:
        if len(self._chunks) > 1:
            self._chunks = [pd.concat(self._chunks, ignore_index=True)]
        return self._chunks[0] if self._chunks else pd.DataFrame({"kind": [], "ts_ns": []})

    def _prune(self, now_ns: int) -> None:
        """Drop what no pod still to be sent needs (see the module's docstring)."""
        keep_from = min(now_ns, self._analysed_ns) - self.horizon_ns
        for pod in self._pending.values():
            # a pod's start as analysed so far may be later than its real one (its first CNI
            # exec seen before the RunPodSandbox reply): keep a horizon before it too
            keep_from = min(keep_from, pod.start_ns - self.clock_offset_ns - self.horizon_ns)
        window = self._window()
        if not len(window):
            return
        first = window["ts_ns"]
        if "start_ns" in window:
            first = first.where(window["start_ns"].isna(), window["start_ns"])
        old = (first < keep_from).fillna(False) & ~window["kind"].isin(LONG_LIVED_KINDS)
        n = int(old.sum())
        if n:
            self._chunks = [window.loc[~old].reset_index(drop=True)]
            self.stats.pruned += n
        self.stats.events = len(self._chunks[0])

    def _remember(self, sent: Sequence[Emitted]) -> None:
        for e in sent:
            self._emitted[e.pod.sandbox_id] = None
            self.stats.emitted += 1
        while len(self._emitted) > EMITTED_MEMORY:
            self._emitted.popitem(last=False)


def _still_starting(pod: Pod) -> bool:
    """Incomplete only because more of its start is still to come (not lost or earlier)."""
    return pod.status == "incomplete" and pod.incomplete_reason in (
        STILL_STARTING,
        NO_CONTAINER_SEEN,
    )


def _incomplete(pod: Pod, reason: str) -> Pod:
    return replace(pod, status="incomplete", incomplete_reason=reason)
