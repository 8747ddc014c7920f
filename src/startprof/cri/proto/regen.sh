#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Regenerates api_pb2.py and api_pb2.pyi from api.proto with the venv's grpcio-tools.
# The generated files are committed so that installing startprof never needs protoc.
# The proto is compiled from src/ so it registers as "startprof/cri/proto/api.proto" in
# protobuf's default descriptor pool: a bare "api.proto" would clash with any other module that
# also calls its file api.proto. No *_pb2_grpc.py: the gRPC stubs are hand-written in lab/cri.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
python=${PYTHON:-$src/../.venv/bin/python}
cd "$src"
"$python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. startprof/cri/proto/api.proto
