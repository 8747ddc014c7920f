# startprof: set-up, tests, lint and the main job. Run as root: `sudo make demo`, `sudo make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
BIN_LINK  := /usr/local/bin/startprof

.PHONY: setup system venv go-client test unit integration lint demo clean

setup: system venv

system:
	@scripts/setup-system.sh

# bcc's Python bindings come from Debian (python3-bpfcc) and live in /usr/bin/python3's
# dist-packages, so the venv is made from that interpreter and sees its site packages.
$(PY):
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	ln -sfn $(abspath $(VENV))/bin/startprof $(BIN_LINK)
	touch $@

venv: $(STAMP)

# The grpc-go CRI client the integration tests use as the kubelet's transport (Debian packages,
# cached in build/kubelet-client by a hash of its sources).
go-client: system
	@scripts/setup-go-client.sh >/dev/null

test: setup go-client
	$(PY) -m pytest tests

unit: venv
	$(PY) -m pytest tests/unit

integration: setup go-client
	$(PY) -m pytest tests/integration

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

demo: setup
	scripts/demo.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
	[ ! -L $(BIN_LINK) ] || rm -f $(BIN_LINK)
