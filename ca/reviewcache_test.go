package ca

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeReviews stands in for the API server: every token "tok-<node>" belongs to <node>,
// anything else is refused, and it counts the reviews it was asked for.
type fakeReviews struct {
	calls atomic.Int32
	gate  chan struct{} // when set, each review waits for a receive
}

func (f *fakeReviews) review(ctx context.Context, token string) (string, error) {
	f.calls.Add(1)
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if node, ok := cutToken(token); ok {
		return node, nil
	}
	return "", unauthenticated("unknown token")
}

// cutToken reads the node of "tok-<node>", or of "tok-<node>.<payload>.<signature>".
func cutToken(token string) (string, bool) {
	rest, ok := strings.CutPrefix(token, "tok-")
	node, _, _ := strings.Cut(rest, ".")
	return node, ok && node != ""
}

// clock is a settable time for the cache.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestCache(f *fakeReviews, size int) (*reviewCache, *clock) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c := newReviewCache(f.review, time.Minute, size)
	c.now = clk.now
	return c, clk
}

func mustNode(t *testing.T, c *reviewCache, token, want string) {
	t.Helper()
	node, err := c.authenticate(context.Background(), token)
	if err != nil || node != want {
		t.Fatalf("authenticate(%s) = %q, %v; want %q", token, node, err, want)
	}
}

func TestReviewCacheReuses(t *testing.T) {
	f := &fakeReviews{}
	c, clk := newTestCache(f, 10)

	mustNode(t, c, "tok-node1", "node1")
	mustNode(t, c, "tok-node1", "node1")
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("two requests with one token made %d reviews, want 1", n)
	}
	mustNode(t, c, "tok-node2", "node2")
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("a second token made %d reviews in all, want 2", n)
	}

	clk.add(59 * time.Second)
	mustNode(t, c, "tok-node1", "node1")
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("within the TTL: %d reviews, want still 2", n)
	}
	clk.add(time.Second)
	mustNode(t, c, "tok-node1", "node1")
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("at the end of the TTL: %d reviews, want 3", n)
	}
}

// A refusal is not remembered: the next request with that token is reviewed again.
func TestReviewCacheDoesNotKeepRefusals(t *testing.T) {
	f := &fakeReviews{}
	c, _ := newTestCache(f, 10)
	for range 3 {
		var ae *authError
		if _, err := c.authenticate(context.Background(), "forged"); !errors.As(err, &ae) {
			t.Fatalf("forged token: %v, want an *authError", err)
		}
	}
	if n := f.calls.Load(); n != 3 {
		t.Errorf("three requests with a refused token made %d reviews, want 3", n)
	}
	if n := c.len(); n != 0 {
		t.Errorf("%d entries kept after refusals, want 0", n)
	}
}

// Requests that arrive while their token is being reviewed share that review; one that
// gives up does not end it for the others.
func TestReviewCacheSharesReviewUnderWay(t *testing.T) {
	f := &fakeReviews{gate: make(chan struct{})}
	c, _ := newTestCache(f, 10)

	gaveUp, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.authenticate(gaveUp, "tok-node1")
		errc <- err
	}()
	const n = 50
	var wg sync.WaitGroup
	results := make(chan string, n)
	for range n {
		wg.Go(func() {
			node, err := c.authenticate(context.Background(), "tok-node1")
			if err != nil {
				node = err.Error()
			}
			results <- node
		})
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("the request that gave up: %v, want context.Canceled", err)
	}

	f.gate <- struct{}{} // exactly one review may proceed
	wg.Wait()
	close(results)
	for node := range results {
		if node != "node1" {
			t.Fatalf("a waiting request got %q, want node1", node)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("%d concurrent requests with one token made %d reviews, want 1", n+1, got)
	}
}

// The cache never holds more than its size; expired entries make room again.
func TestReviewCacheBounded(t *testing.T) {
	f := &fakeReviews{}
	c, clk := newTestCache(f, 4)
	for i := range 10 {
		mustNode(t, c, fmt.Sprintf("tok-n%d", i), fmt.Sprintf("n%d", i))
		if n := c.len(); n > 4 {
			t.Fatalf("after %d tokens the cache holds %d entries, more than its size 4", i+1, n)
		}
	}
	// n0..n3 are kept; n9 was not.
	mustNode(t, c, "tok-n0", "n0")
	mustNode(t, c, "tok-n9", "n9")
	if n := f.calls.Load(); n != 11 {
		t.Errorf("%d reviews, want 11: n0 from the cache, n9 (not kept) reviewed again", n)
	}

	clk.add(time.Minute)
	mustNode(t, c, "tok-n9", "n9")
	mustNode(t, c, "tok-n9", "n9")
	if n := f.calls.Load(); n != 12 {
		t.Errorf("after the others expired, n9 was reviewed %d times in all, want it kept "+
			"(12 reviews)", n)
	}
}

// A token that expires before the TTL is kept only until it expires.
func TestReviewCacheStopsAtTokenExpiry(t *testing.T) {
	f := &fakeReviews{}
	c, clk := newTestCache(f, 10)
	exp := clk.now().Add(10 * time.Second)
	token := "tok-node1"
	// A JWT whose payload carries exp, and which fakeReviews reads as node1's.
	payload := base64.RawURLEncoding.EncodeToString(
		fmt.Appendf(nil, `{"sub":"x","exp":%d}`, exp.Unix()))
	token += "." + payload + ".sig"

	if got, ok := tokenExpiry(token); !ok || !got.Equal(exp) {
		t.Fatalf("tokenExpiry = %v, %v; want %v", got, ok, exp)
	}
	mustNode(t, c, token, "node1")
	clk.add(9 * time.Second)
	mustNode(t, c, token, "node1")
	clk.add(time.Second)
	mustNode(t, c, token, "node1")
	if n := f.calls.Load(); n != 2 {
		t.Errorf("%d reviews, want 2: the token's exp ends its entry", n)
	}

	for _, bad := range []string{"", "a.b", "a.!!.c", "a." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x"}`)) + ".c"} {
		if _, ok := tokenExpiry(bad); ok {
			t.Errorf("tokenExpiry(%q) found an expiry", bad)
		}
	}
}
