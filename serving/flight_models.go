package serving

import (
	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
)

// modelTable is a Flight view of one model's state.
type modelTable struct {
	name   string
	schema func(dim int) *arrow.Schema
	// rows estimates the row count.
	rows func(st *featurestore.Store, m *models.Models) int64
	// scan appends every row to b, calling flush after each row.
	scan func(m *models.Models, b *array.RecordBuilder, flush func() error) error
}

var factorsType = arrow.ListOf(arrow.PrimitiveTypes.Float32)

// modelTables are the model views, in ListFlights order.
var modelTables = []*modelTable{
	{
		name: "item_neighbors",
		schema: func(int) *arrow.Schema {
			return arrow.NewSchema([]arrow.Field{
				{Name: "item_id", Type: arrow.BinaryTypes.String},
				{Name: "neighbor_id", Type: arrow.BinaryTypes.String},
				{Name: "rank", Type: arrow.PrimitiveTypes.Int32},
				{Name: "score", Type: arrow.PrimitiveTypes.Float64},
			}, nil)
		},
		// Estimated from a sample of neighbour lists.
		rows: func(_ *featurestore.Store, m *models.Models) int64 {
			n, err := m.ItemNeighborRows()
			if err != nil {
				return -1
			}
			return n
		},
		scan: func(m *models.Models, b *array.RecordBuilder, flush func() error) error {
			return m.ScanItemNeighbors(func(item string, ns []models.Neighbor) error {
				for i, n := range ns {
					b.Field(0).(*array.StringBuilder).Append(item)
					b.Field(1).(*array.StringBuilder).Append(n.ItemID)
					b.Field(2).(*array.Int32Builder).Append(int32(i + 1))
					b.Field(3).(*array.Float64Builder).Append(n.Score)
					if err := flush(); err != nil {
						return err
					}
				}
				return nil
			})
		},
	},
	{
		name: "user_factors",
		schema: func(int) *arrow.Schema {
			return arrow.NewSchema([]arrow.Field{
				{Name: "user_id", Type: arrow.BinaryTypes.String},
				{Name: "factors", Type: factorsType},
				{Name: "events", Type: arrow.PrimitiveTypes.Int64},
			}, nil)
		},
		rows: func(st *featurestore.Store, _ *models.Models) int64 { return st.Stats().Users },
		scan: func(m *models.Models, b *array.RecordBuilder, flush func() error) error {
			return m.ScanUserFactors(func(user string, f []float32, events int64) error {
				b.Field(0).(*array.StringBuilder).Append(user)
				appendFactors(b.Field(1).(*array.ListBuilder), f)
				b.Field(2).(*array.Int64Builder).Append(events)
				return flush()
			})
		},
	},
	{
		name: "item_factors",
		schema: func(int) *arrow.Schema {
			return arrow.NewSchema([]arrow.Field{
				{Name: "item_id", Type: arrow.BinaryTypes.String},
				{Name: "factors", Type: factorsType},
			}, nil)
		},
		rows: func(_ *featurestore.Store, m *models.Models) int64 { return m.ItemCount() },
		scan: func(m *models.Models, b *array.RecordBuilder, flush func() error) error {
			return m.ScanItemFactors(func(item string, f []float32) error {
				b.Field(0).(*array.StringBuilder).Append(item)
				appendFactors(b.Field(1).(*array.ListBuilder), f)
				return flush()
			})
		},
	},
	{
		name: "ranker_weights",
		schema: func(int) *arrow.Schema {
			return arrow.NewSchema([]arrow.Field{
				{Name: "feature", Type: arrow.BinaryTypes.String},
				{Name: "weight", Type: arrow.PrimitiveTypes.Float64},
				{Name: "version", Type: arrow.PrimitiveTypes.Int64},
				{Name: "history_weight", Type: arrow.PrimitiveTypes.Float64},
			}, nil)
		},
		rows: func(*featurestore.Store, *models.Models) int64 { return int64(len(models.RankFeatureNames())) },
		scan: func(m *models.Models, b *array.RecordBuilder, flush func() error) error {
			names, w, version := m.RankerWeights()
			hw := m.RankerHistoryWeights()
			at := func(ws []float64, i int) float64 {
				if i < len(ws) {
					return ws[i]
				}
				return 0
			}
			for i, n := range names {
				b.Field(0).(*array.StringBuilder).Append(n)
				b.Field(1).(*array.Float64Builder).Append(at(w, i))
				b.Field(2).(*array.Int64Builder).Append(version)
				b.Field(3).(*array.Float64Builder).Append(at(hw, i))
			}
			return flush()
		},
	},
}

func modelTableNamed(name string) *modelTable {
	for _, t := range modelTables {
		if t.name == name {
			return t
		}
	}
	return nil
}

func appendFactors(lb *array.ListBuilder, f []float32) {
	lb.Append(true)
	vb := lb.ValueBuilder().(*array.Float32Builder)
	vb.AppendValues(f, nil)
}

// doGetModel streams a model table in batches of at most batchRows rows
// (and about flightBatchBytes).
func (f *FlightServer) doGetModel(p *plan, w *flight.Writer) error {
	b := array.NewRecordBuilder(f.mem, p.schema)
	defer b.Release()
	rows := 0
	write := func() error {
		rec := b.NewRecord()
		defer rec.Release()
		rows = 0
		if rec.NumRows() == 0 {
			return nil
		}
		return w.Write(rec)
	}
	flush := func() error {
		rows++
		if rows < f.batchRows && b.Field(0).(*array.StringBuilder).DataLen() < flightBatchBytes/2 {
			return nil
		}
		return write()
	}
	if err := p.model.scan(f.models, b, flush); err != nil {
		return toStatus(err)
	}
	if err := write(); err != nil {
		return toStatus(err)
	}
	return nil
}
