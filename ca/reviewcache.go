package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// How the answers of the Kubernetes API about agents' tokens are reused.
const (
	// reviewCacheTTL is how long a successful TokenReview stands for its token. An agent
	// renews every certificate of its node with the same token, and a node's worth of
	// renewals (a restarted agent, a root rotation) would otherwise send the API server
	// one review each. A minute is also about what the API server itself trusts its own
	// answers for (it caches reviews for 10 s), so a token revoked by deleting its pod is
	// refused at most about 70 s later.
	reviewCacheTTL = time.Minute
	// reviewCacheSize bounds the tokens remembered. Kubernetes supports clusters of up to
	// 5000 nodes, one agent each, and an agent's projected token changes about hourly, so
	// within one TTL a cluster has at most about two live tokens a node. An entry is
	// about 200 bytes, so a full cache is about 3 MB.
	reviewCacheSize = 16384
	// reviewTimeout bounds one TokenReview, which waiting requests share.
	reviewTimeout = 10 * time.Second
)

// reviewCache remembers which node each successfully reviewed token belongs to, for
// reviewCacheTTL or until the token expires, whichever comes first. Tokens are kept only
// as SHA-256 digests. Requests that present a token whose review is under way wait for
// that review instead of starting their own: an agent that starts on a node with a
// hundred pods asks for a hundred certificates at once, all with one token. A refusal or
// a failure is not kept, so a token that is fixed, or an API server that comes back, is
// seen at the next request. When reviewCacheSize unexpired entries are held, further
// reviews are made and not kept until entries expire.
type reviewCache struct {
	review func(ctx context.Context, token string) (string, error)
	ttl    time.Duration
	size   int
	now    func() time.Time

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*reviewEntry
}

// reviewEntry is one token's review: under way until done is closed.
type reviewEntry struct {
	done    chan struct{}
	node    string
	err     error
	expires time.Time // zero while the review is under way
}

func newReviewCache(review func(context.Context, string) (string, error), ttl time.Duration,
	size int) *reviewCache {
	return &reviewCache{review: review, ttl: ttl, size: size, now: time.Now,
		entries: map[[sha256.Size]byte]*reviewEntry{}}
}

// authenticate returns the node of token from a review made at most ttl ago, or from a
// new one. A caller whose ctx ends stops waiting; the review goes on for the others.
func (c *reviewCache) authenticate(ctx context.Context, token string) (string, error) {
	key := sha256.Sum256([]byte(token))
	e, start := c.entry(key)
	if start {
		go c.run(key, e, token)
	}
	select {
	case <-e.done:
		return e.node, e.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// entry returns the token's entry, and whether the caller is to start its review.
func (c *reviewCache) entry(key [sha256.Size]byte) (*reviewEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if e, ok := c.entries[key]; ok && (e.expires.IsZero() || now.Before(e.expires)) {
		return e, false
	}

	delete(c.entries, key)
	e := &reviewEntry{done: make(chan struct{})}
	if len(c.entries) >= c.size {
		c.sweep(now)
	}
	if len(c.entries) < c.size {
		c.entries[key] = e
	}
	return e, true
}

// sweep drops the expired entries. Under c.mu.
func (c *reviewCache) sweep(now time.Time) {
	for k, e := range c.entries {
		if !e.expires.IsZero() && !now.Before(e.expires) {
			delete(c.entries, k)
		}
	}
}

// run reviews token for entry e, which the requests waiting on it then share. The review
// has a context of its own: the request that started it may give up, the others not.
func (c *reviewCache) run(key [sha256.Size]byte, e *reviewEntry, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), reviewTimeout)
	defer cancel()
	node, err := c.review(ctx, token)

	c.mu.Lock()
	e.node, e.err = node, err
	if err == nil {
		e.expires = c.now().Add(c.ttl)
		if exp, ok := tokenExpiry(token); ok && exp.Before(e.expires) {
			e.expires = exp
		}
	} else if c.entries[key] == e {
		delete(c.entries, key)
	}
	c.mu.Unlock()
	close(e.done)
}

// len is the number of entries held, for tests.
func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// tokenExpiry reads the exp claim of a JWT without checking its signature (RFC 7519
// section 4.1.4). It is only asked about a token the API server has just accepted, whose
// claims are therefore its own.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(*claims.Exp, 0), true
}
