package serving

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec
	"google.golang.org/grpc/mem"
)

// grpc-go turns every error of a codec's Unmarshal into INTERNAL, but a
// message that does not decode (garbage, a truncated message, a string
// that is not UTF-8) is the caller's fault: INVALID_ARGUMENT. So the
// server's codec does not fail: it keeps the decoding error beside the
// message, and the guard, which sees every request message before its
// handler runs, answers INVALID_ARGUMENT for it.

// decodeErrors maps a request message (its pointer) that failed to
// decode to the error; the guard takes it out before the handler runs.
var decodeErrors sync.Map

// lenientCodec is the proto codec with decoding errors set aside.
type lenientCodec struct{ base encoding.CodecV2 }

func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.base.Unmarshal(data, v); err != nil {
		decodeErrors.Store(v, err)
	}
	return nil
}

func (c lenientCodec) Name() string { return c.base.Name() }

// codecOption installs lenientCodec on a server.
func codecOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(lenientCodec{encoding.GetCodecV2("proto")})
}

// takeDecodeError returns (and forgets) the decoding error of msg, if any.
func takeDecodeError(msg any) (error, bool) {
	v, ok := decodeErrors.LoadAndDelete(msg)
	if !ok {
		return nil, false
	}
	return v.(error), true
}

// decodeStatus is the INVALID_ARGUMENT answer to a message that did not
// decode.
func decodeStatus(err error) error {
	return invalidArg("request", "not a valid protobuf message: %v", err)
}
