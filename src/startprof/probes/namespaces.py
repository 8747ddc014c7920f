"""The namespaces probe (``bpf/namespaces.bpf.c``): clone/clone3 that create namespaces,
unshare and setns, each with its flags, result and entry/exit times."""

from __future__ import annotations

from typing import Final

from startprof.events import Event
from startprof.linux import CLONE_FLAGS as CLONE_FLAGS  # the kernel's names, re-exported
from startprof.linux import CSIGNAL as CSIGNAL
from startprof.linux import NAMESPACE_FLAGS as NAMESPACE_FLAGS
from startprof.linux import flag_names as flag_names
from startprof.linux import namespace_names as namespace_names
from startprof.probes.abi import Decoder, Ns, RecordType, base_event

NAME: Final = "namespaces"


def _decode(kind: str) -> Decoder:
    def decode(raw: bytes) -> list[Event]:
        r = Ns.from_buffer_copy(raw)
        ev = base_event(kind, r.h)
        ev["ts_ns"] = r.enter_ns
        ev["start_ns"] = r.enter_ns
        ev["end_ns"] = r.h.ts_ns
        ev["ret"] = r.ret
        if kind == "setns":
            ev["fd"] = r.fd
            ev["nstype"] = r.nstype
        else:
            ev["flags"] = r.flags
        return [ev]

    return decode


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.CLONE: _decode("clone"),
    RecordType.UNSHARE: _decode("unshare"),
    RecordType.SETNS: _decode("setns"),
}
