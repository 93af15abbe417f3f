package serving

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/eventlog"
)

// invalidArg reports a bad request field.
func invalidArg(field, format string, args ...any) error {
	msg := field + ": " + fmt.Sprintf(format, args...)
	return statusWithViolations(codes.InvalidArgument, msg, []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}})
}

// statusWithViolations is a status error carrying BadRequest details.
func statusWithViolations(code codes.Code, msg string, v []*errdetails.BadRequest_FieldViolation) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// toStatus maps an internal error to a gRPC status error. Errors that are
// already statuses pass through.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, featurestore.ErrUnknownView):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, featurestore.ErrUnknownFeature):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, featurestore.ErrClosed), errors.Is(err, eventlog.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, updater.ErrDiskFull):
		// RESOURCE_EXHAUSTED with the reason DISK_FULL, which REST answers
		// with 507 Insufficient Storage.
		return exhausted(err.Error(), reasonDiskFull)
	case errors.Is(err, featurestore.ErrStorage):
		return status.Error(codes.Unavailable, err.Error()+" (the server must be restarted)")
	}
	return status.Error(codes.Internal, err.Error())
}

const reasonDiskFull = "DISK_FULL"

// exhausted is a RESOURCE_EXHAUSTED status, with an ErrorInfo of reason
// unless it is "".
func exhausted(msg, reason string) error {
	st := status.New(codes.ResourceExhausted, msg)
	if reason == "" {
		return st.Err()
	}
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "recsys"}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// isDiskFull reports whether err is the status of a refused ingest on a
// full disk.
func isDiskFull(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Reason == reasonDiskFull {
			return true
		}
	}
	return false
}

// trimPkg drops the package prefix of a sentinel-wrapped error message.
func trimPkg(err error) string {
	return strings.TrimPrefix(err.Error(), "featurestore: ")
}
