#!/usr/bin/env bash
# Generates gen/ from proto/: Python modules, .pyi stubs, gRPC stubs and Envoy's descriptor set.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default gen/; scripts/check_gen.sh uses a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-gen}")
PY=${PY:-$PWD/.venv/bin/python}
SITE=$("$PY" -c 'import google.api.http_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(m.__file__))))')
TOOLS_INC=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p "$OUT/envoy"
PROTOS=$(cd proto && ls webhooks/v1/*.proto)
(
    cd proto
    "$PY" -m grpc_tools.protoc -I . -I "$SITE" -I "$TOOLS_INC" \
        --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" $PROTOS
    # Envoy needs every service and every type it prints, including the error details in statuses.
    "$PY" -m grpc_tools.protoc -I . -I "$SITE" -I "$TOOLS_INC" --include_imports \
        --descriptor_set_out="$OUT/envoy/webhooks.pb" $PROTOS google/rpc/error_details.proto
)
touch "$OUT/webhooks/__init__.py" "$OUT/webhooks/v1/__init__.py"
