package serving

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// strictQuery parses REST query parameters as grpc-gateway does, but
// refuses a parameter that names no field of the request: the gateway
// ignores those, so a typo such as exclude_sen=true would change nothing
// without a word.
type strictQuery struct{ runtime.DefaultQueryParser }

var mapKey = regexp.MustCompile(`^(.*)\[(.*)\]$`)

func (q strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	md := msg.ProtoReflect().Descriptor()
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		path := key
		if m := mapKey.FindStringSubmatch(key); m != nil {
			path = m[1]
		}
		if !hasFieldPath(md, strings.Split(path, ".")) {
			return fmt.Errorf("%s: unknown query parameter%s", key, suggest(key, queryNames(md)))
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

func hasFieldPath(md protoreflect.MessageDescriptor, path []string) bool {
	for i, name := range path {
		if md == nil {
			return false
		}
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			fd = md.Fields().ByJSONName(name)
		}
		if fd == nil {
			return false
		}
		if i < len(path)-1 {
			md = fd.Message()
		}
	}
	return true
}

// queryNames are the top-level parameters a request takes.
func queryNames(md protoreflect.MessageDescriptor) []string {
	var names []string
	for i := 0; i < md.Fields().Len(); i++ {
		names = append(names, string(md.Fields().Get(i).Name()))
	}
	return names
}

// suggest returns " (did you mean X?)" for the known name closest to name
// when one is close, else the list of known names.
func suggest(name string, known []string) string {
	if best := Closest(name, known); best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return fmt.Sprintf(" (known: %s)", strings.Join(known, ", "))
}

// Closest returns the name of known nearest to name by edit distance, or ""
// when none is within a third of its length (plus two).
func Closest(name string, known []string) string {
	best, bestD := "", len(name)/3+2
	for _, c := range known {
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
