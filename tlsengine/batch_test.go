package tlsengine

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// One Write of many records is one send, and the bytes arrive intact.
func TestBatchedTLSSendsOneWritePerCall(t *testing.T) {
	ca := newTestCA(t)
	cert, err := ca.issue(idB).GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	tlsCert := tls.Certificate{PrivateKey: cert.PrivateKey}
	for _, c := range cert.Certificates {
		tlsCert.Certificate = append(tlsCert.Certificate, c.Raw)
	}
	ln := listen(t, "127.0.0.1:0")
	defer ln.Close()
	payload := randBytes(256<<10, 3)
	got := make(chan []byte, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		srv := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{tlsCert}})
		b, _ := io.ReadAll(io.LimitReader(srv, int64(len(payload))))
		got <- b
		srv.Close()
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingConn{Conn: raw}
	c := newBatchedClient(counting, &tls.Config{InsecureSkipVerify: true})
	defer c.Close()
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := counting.writes.Load()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if n := counting.writes.Load() - before; n != 1 {
		t.Fatalf("a %d-byte Write took %d sends, want 1", len(payload), n)
	}
	if b := <-got; string(b) != string(payload) {
		t.Fatalf("server read %d bytes that differ from the %d sent", len(b), len(payload))
	}
}
