#!/usr/bin/env bash
# Regenerates the Go, gateway and OpenAPI code from proto/recsys/v1 with
# pinned tools only: protoc from the pinned grpcio-tools wheel in .venv,
# the plugins from proto/tools/go.mod. Run through `make proto`; OUT=DIR
# writes the generated files under DIR instead of proto/ (make proto-check).
# openapi.json is OpenAPI 3: protoc-gen-openapiv2's Swagger 2.0 (from the
# HTTP mapping in recsys_http.yaml) converted and completed by
# proto/tools/openapi3 with the overlay recsys_openapi.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-proto}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
bin=$(pwd)/.bin
mkdir -p "$bin"
(cd proto/tools && go build -o "$bin/" \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 \
  ./openapi3)
wkt=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
cfg=proto/recsys/v1/recsys_http.yaml
swagger=$(mktemp -d)
trap 'rm -rf "$swagger"' EXIT
PATH="$bin:$PATH" "$py" -m grpc_tools.protoc -I proto -I "$wkt" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out="$out" --grpc-gateway_opt=paths=source_relative,grpc_api_configuration=$cfg \
  --openapiv2_out="$swagger" --openapiv2_opt=grpc_api_configuration=$cfg,json_names_for_fields=false,allow_merge=true,merge_file_name=recsys \
  proto/recsys/v1/recsys.proto
"$bin/openapi3" -in "$swagger/recsys.swagger.json" -overlay proto/recsys/v1/recsys_openapi.yaml -out "$out/recsys/v1/openapi.json"
