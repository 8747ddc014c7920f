# The BPF C sources ship as package data of ``startprof.bpf`` (see pyproject.toml) so that bcc
# can compile them at run time from an installed wheel; find them with startprof.resources.
