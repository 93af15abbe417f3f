package serving

import (
	"context"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/recommend"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// recommender adapts the store's recommendations to the API.
type recommender struct {
	store *featurestore.Store
	rec   *recommend.Recommender
}

func (r *recommender) recommend(user string, k int, category string, exclude []string, excludeSeen, keepPurchased bool) ([]*recsysv1.ScoredItem, error) {
	ex := make(map[string]bool, len(exclude))
	for _, id := range exclude {
		ex[id] = true
	}
	recs, err := r.rec.Recommend(user, recommend.Options{K: k, Category: category, Exclude: ex, ExcludeSeen: excludeSeen, KeepPurchased: keepPurchased})
	if err != nil {
		return nil, err
	}
	return scoredItems(recs), nil
}

func scoredItems(recs []recommend.Recommendation) []*recsysv1.ScoredItem {
	out := make([]*recsysv1.ScoredItem, len(recs))
	for i, c := range recs {
		out[i] = &recsysv1.ScoredItem{ItemId: c.ItemID, Score: c.Score, Reason: c.Reason}
	}
	return out
}

func (r *recommender) popular(category string, k int, skip func(string) bool) ([]*recsysv1.ScoredItem, error) {
	cands, err := r.store.Popular(category, k, skip)
	if err != nil {
		return nil, err
	}
	reason := recommend.PopularReason(category)
	out := make([]*recsysv1.ScoredItem, len(cands))
	for i, c := range cands {
		out[i] = &recsysv1.ScoredItem{ItemId: c.ItemID, Score: c.Score, Reason: reason}
	}
	return out, nil
}

// splitExclude splits every exclude value at commas (REST's exclude=a,b).
func splitExclude(values []string) []string {
	var out []string
	for _, v := range values {
		for _, id := range strings.Split(v, ",") {
			if id != "" {
				out = append(out, id)
			}
		}
	}
	return out
}

// SimilarItems implements RecommendService.SimilarItems.
func (s *Server) SimilarItems(ctx context.Context, req *recsysv1.SimilarItemsRequest) (*recsysv1.SimilarItemsResponse, error) {
	if err := checkID("item_id", req.GetItemId()); err != nil {
		return nil, err
	}
	k, err := s.k(req.K)
	if err != nil {
		return nil, err
	}
	recs, err := s.rec.rec.SimilarItems(req.ItemId, k)
	if err != nil {
		return nil, toStatus(err)
	}
	return &recsysv1.SimilarItemsResponse{Items: scoredItems(recs)}, nil
}

// SimilarUsers implements RecommendService.SimilarUsers.
func (s *Server) SimilarUsers(ctx context.Context, req *recsysv1.SimilarUsersRequest) (*recsysv1.SimilarUsersResponse, error) {
	if err := checkID("user_id", req.GetUserId()); err != nil {
		return nil, err
	}
	k, err := s.k(req.K)
	if err != nil {
		return nil, err
	}
	users, err := s.rec.rec.SimilarUsers(req.UserId, k)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &recsysv1.SimilarUsersResponse{Users: make([]*recsysv1.ScoredUser, len(users))}
	for i, u := range users {
		resp.Users[i] = &recsysv1.ScoredUser{UserId: u.UserID, Score: u.Score}
	}
	return resp, nil
}

// ListModels implements RecommendService.ListModels.
func (s *Server) ListModels(ctx context.Context, _ *recsysv1.ListModelsRequest) (*recsysv1.ListModelsResponse, error) {
	ms, err := s.models.Info()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &recsysv1.ListModelsResponse{ModelVersion: s.models.Version()}
	for _, m := range ms {
		mi := &recsysv1.ModelInfo{Name: m.Name, Version: m.Version, Examples: m.Examples, Frozen: m.Frozen,
			RollingAuc: m.AUC, RollingLogLoss: m.LogLoss, PublishedAuc: m.PublishedAUC, PublishedLogLoss: m.PublishedLogLoss}
		if m.LastEventTS > 0 {
			mi.LastUpdate = timestamppb.New(msTime(m.LastEventTS))
		}
		resp.Models = append(resp.Models, mi)
	}
	return resp, nil
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// GetUserHistory implements RecommendService.GetUserHistory.
func (s *Server) GetUserHistory(ctx context.Context, req *recsysv1.GetUserHistoryRequest) (*recsysv1.GetUserHistoryResponse, error) {
	if err := checkID("user_id", req.GetUserId()); err != nil {
		return nil, err
	}
	limit := 50
	switch {
	case req.Limit < 0 || req.Limit > 1000:
		return nil, invalidArg("limit", "%d is outside 1 to 1000", req.Limit)
	case req.Limit > 0:
		limit = int(req.Limit)
	}
	hist, err := s.rec.rec.UserHistory(req.UserId, limit)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &recsysv1.GetUserHistoryResponse{Items: make([]*recsysv1.HistoryItem, len(hist))}
	for i, h := range hist {
		resp.Items[i] = &recsysv1.HistoryItem{ItemId: h.ItemID, CategoryId: h.CategoryID, Behavior: h.Behavior.String(),
			EventTime: timestamppb.New(msTime(h.TS)), Events: int32(h.Events)}
	}
	return resp, nil
}
