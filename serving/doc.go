// Package serving exposes the feature store and the updater through three
// front doors that share one implementation (Server):
//
//   - gRPC (package recsys.v1, with server reflection and the health service);
//   - REST, through grpc-gateway over the same service implementations, with
//     the OpenAPI 3 description at /openapi.json. POST /v1/events has its own
//     JSON decoder so that one bad event is rejected alone, with a reason
//     naming its field, and RFC 3339 event times are accepted;
//   - Arrow Flight, for bulk reads of feature views as Arrow record batches
//     streamed straight from Pebble iterators.
//
// Every error that leaves the package is turned into a gRPC status in one
// place (toStatus); grpc-gateway maps those to HTTP codes.
package serving
