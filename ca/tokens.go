package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
)

// nodeTokens maps bearer tokens to node names. Only SHA-256 digests of the tokens are
// kept, so every comparison is over 32 bytes and takes the same time whatever the length
// of the token presented.
type nodeTokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	node   string
	digest [sha256.Size]byte
}

// loadNodeTokens reads a node tokens file: one "<node> <token>" per line; blank lines
// and lines starting with '#' are skipped.
func loadNodeTokens(path string) (*nodeTokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading node tokens: %w", err)
	}
	t, err := parseNodeTokens(data)
	if err != nil {
		return nil, fmt.Errorf("reading node tokens %s: %w", path, err)
	}
	return t, nil
}

func parseNodeTokens(data []byte) (*nodeTokens, error) {
	t := &nodeTokens{}
	nodes := map[string]int{}
	digests := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"<node> <token>\", found %d fields",
				n, len(fields))
		}
		e := tokenEntry{node: fields[0], digest: sha256.Sum256([]byte(fields[1]))}
		if prev, dup := nodes[e.node]; dup {
			return nil, fmt.Errorf("line %d: node %s already has a token on line %d; "+
				"keep one", n, e.node, prev)
		}
		if prev, dup := digests[e.digest]; dup {
			return nil, fmt.Errorf("line %d: the token is the same as on line %d; "+
				"give every node its own token", n, prev)
		}
		nodes[e.node], digests[e.digest] = n, n
		t.entries = append(t.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("splitting into lines: %w", err)
	}

	if len(t.entries) == 0 {
		return nil, fmt.Errorf("no node tokens; add a line \"<node> <token>\" per node")
	}
	return t, nil
}

// node returns the node whose token is token. Every entry is compared, so the time taken
// does not tell which entry matched or how much of a token was right.
func (t *nodeTokens) node(token string) (string, bool) {
	d := sha256.Sum256([]byte(token))
	found := ""
	for _, e := range t.entries {
		if subtle.ConstantTimeCompare(d[:], e.digest[:]) == 1 {
			found = e.node
		}
	}
	return found, found != "" && token != ""
}

// authenticate is node for a request's token.
func (t *nodeTokens) authenticate(_ context.Context, token string) (string, error) {
	if node, ok := t.node(token); ok {
		return node, nil
	}
	return "", unauthenticated("missing or unknown node token; send Authorization: " +
		"Bearer <this node's token>")
}
