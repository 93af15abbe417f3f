package synth

import (
	"bufio"
	"io"
	"strconv"
)

const writeBufSize = 64 << 10

// WriteJSONL drains g into w, one JSON object a line:
//
//	{"user_id":"u1","item_id":"i2","category_id":"c3","behavior":"view","ts":1767225600000}
//
// Output is buffered internally. It returns the number of events consumed
// from g and handed to the buffer, and the first write error, if any.
func WriteJSONL(w io.Writer, g *Generator) (int, error) {
	return drain(w, g, appendJSON)
}

// WriteTaobaoCSV drains g into w in the headerless Taobao UserBehavior
// layout:
//
//	user_id,item_id,category_id,behavior,unix_seconds
//
// Ids are numeric (no u/i/c prefix) and behaviors use the Taobao names
// pv, cart, fav and buy. Timestamps are rounded down to whole seconds. Return
// values are as for WriteJSONL.
func WriteTaobaoCSV(w io.Writer, g *Generator) (int, error) {
	return drain(w, g, appendCSV)
}

func drain(w io.Writer, g *Generator, appendLine func([]byte, *Event) []byte) (int, error) {
	bw := bufio.NewWriterSize(w, writeBufSize)
	line := make([]byte, 0, 128)
	n := 0
	for {
		e, ok := g.Next()
		if !ok {
			break
		}
		line = appendLine(line[:0], &e)
		if _, err := bw.Write(line); err != nil {
			return n, err
		}
		n++
	}
	return n, bw.Flush()
}

func appendJSON(b []byte, e *Event) []byte {
	// Ids and behaviors never need JSON escaping.
	b = append(b, `{"user_id":"`...)
	b = append(b, e.UserID...)
	b = append(b, `","item_id":"`...)
	b = append(b, e.ItemID...)
	b = append(b, `","category_id":"`...)
	b = append(b, e.CategoryID...)
	b = append(b, `","behavior":"`...)
	b = append(b, e.Behavior...)
	b = append(b, `","ts":`...)
	b = strconv.AppendInt(b, e.TS, 10)
	return append(b, "}\n"...)
}

func appendCSV(b []byte, e *Event) []byte {
	b = append(b, stripPrefix(e.UserID)...)
	b = append(b, ',')
	b = append(b, stripPrefix(e.ItemID)...)
	b = append(b, ',')
	b = append(b, stripPrefix(e.CategoryID)...)
	b = append(b, ',')
	b = append(b, taobaoBehavior(e.Behavior)...)
	b = append(b, ',')
	sec := e.TS / 1000
	if e.TS%1000 < 0 { // floor for pre-1970 times
		sec--
	}
	b = strconv.AppendInt(b, sec, 10)
	return append(b, '\n')
}

func stripPrefix(id string) string {
	if len(id) > 0 && (id[0] < '0' || id[0] > '9') {
		return id[1:]
	}
	return id
}

func taobaoBehavior(b string) string {
	for i, name := range behaviorNames {
		if name == b {
			return taobaoNames[i]
		}
	}
	return b
}
