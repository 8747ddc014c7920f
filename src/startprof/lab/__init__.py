"""The lab: an embedded containerd that startprof runs itself, and a kubelet-like CRI driver."""
