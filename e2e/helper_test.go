package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The helper modes run inside pods. Servers print "ready" once listening; every mode
// prints its result as one line on stdout and exits non-zero on an unexpected error.
//
//	sink ADDR            accept one conn, read to EOF, then send back the SHA-256 of what
//	                     was read (so the reverse direction must survive a half-close)
//	source ADDR N SEED   accept one conn and send N pseudo-random bytes at once, before
//	                     reading anything (a server that speaks first), then close
//	reset ADDR           accept one conn, send "x", then reset it
//	send ADDR N SEED     connect, send N bytes, half-close, print the hash sent and the
//	                     reply (the sink's hash of what it got)
//	sendslow ADDR N SEED SECS  send, with the N bytes spread evenly over SECS seconds
//	recv ADDR            connect, read to EOF, print the hash of what arrived
//	sendtext ADDR T N    connect, send text T N times, half-close, print the reply
//	hold ADDR            connect, send "hi", print "connected", wait for stdin to close
//	connect ADDR SECS    connect with a timeout, print "connected", "timeout" or the error
//	wait-close ADDR      connect, send "hi", print "connected", read until the connection
//	                     ends, print "closed: eof", "closed: reset" or the error
//	read-one ADDR        connect, read until error, print "eof" or "reset" and the bytes
//	whoami ADDR          for every conn, send back the client's address as the app sees
//	                     it (getpeername), then close it
//	recvtext ADDR        connect, read to EOF, print what arrived
//	churn ADDR N         N connections one after another, each read to EOF and closed
//	udp-echo ADDR        answer one UDP datagram with the same bytes, then exit
//	udp-ping ADDR T      send T in a UDP datagram, print the answer
//	garbage ADDR         connect, send bytes that are not TLS, print "closed" once the
//	                     other side has closed the connection
//	stream ADDR SECS     connect, send 16 KiB every 20 ms for up to SECS, print
//	                     "streaming", then how the stream ended (see streamHelper)
//	dial-read ADDR SECS  connect and read, each waiting up to SECS; print the outcome and
//	                     time of each (see dialReadHelper)
const helperEnv = "VEIL_E2E_HELPER"

func runHelper(args []string) {
	if err := helper(args); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helper(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: MODE ADDR [ARGS]")
	}
	mode, addr := args[0], args[1]
	switch mode {
	case "sink", "source", "reset", "whoami":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		fmt.Println("ready")
		if mode == "whoami" {
			for {
				c, err := ln.Accept()
				if err != nil {
					return err
				}
				fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).IP)
				c.Close()
			}
		}
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		switch mode {
		case "sink":
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return err
			}
			_, err = fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
			return err
		case "source":
			n, seed := atoi(args[2]), atoi(args[3])
			_, err := io.Copy(c, stream(n, seed))
			return err
		default:
			c.Write([]byte("x"))
			c.(*net.TCPConn).SetLinger(0)
			return nil
		}
	case "send":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		n, seed := atoi(args[2]), atoi(args[3])
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(c, h), stream(n, seed)); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the reply after half-close: %w", err)
		}
		fmt.Printf("sent=%s reply=%s", hex.EncodeToString(h.Sum(nil)), reply)
		return nil
	case "sendslow":
		return sendSlow(addr, atoi(args[2]), atoi(args[3]), atoi(args[4]))
	case "stream":
		return streamHelper(addr, atoi(args[2]))
	case "dial-read":
		return dialReadHelper(addr, atoi(args[2]))
	case "sendtext":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte(strings.Repeat(args[2]+"\n", atoi(args[3])))); err != nil {
			return err
		}
		c.(*net.TCPConn).CloseWrite()
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the reply: %w", err)
		}
		fmt.Print(reply)
		return nil
	case "hold":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("hi")); err != nil {
			return err
		}
		fmt.Println("connected")
		io.Copy(io.Discard, os.Stdin)
		return nil
	case "wait-close":
		// Opens a connection, says so, then reads until the connection ends and says how.
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("hi")); err != nil {
			return err
		}
		fmt.Println("connected")
		_, err = io.Copy(io.Discard, c)
		switch {
		case err == nil:
			fmt.Println("closed: eof")
		case errors.Is(err, syscall.ECONNRESET):
			fmt.Println("closed: reset")
		default:
			fmt.Println("closed:", err)
		}
		return nil
	case "connect":
		// Reports whether a connection can be opened within the timeout, in seconds.
		c, err := net.DialTimeout("tcp", addr, time.Duration(atoi(args[2]))*time.Second)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			fmt.Println("connected")
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Println("timeout")
		default:
			fmt.Println("error", err)
		}
		return nil
	case "recv":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return err
		}
		fmt.Println(hex.EncodeToString(h.Sum(nil)))
		return nil
	case "recvtext":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		fmt.Print(string(b))
		return nil
	case "churn":
		for range atoi(args[2]) {
			c, err := dial(addr)
			if err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = io.Copy(io.Discard, c)
			c.Close()
			if err != nil {
				return err
			}
		}
		fmt.Println("done")
		return nil
	case "udp-echo":
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		defer pc.Close()
		fmt.Println("ready")
		buf := make([]byte, 2048)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		_, err = pc.WriteTo(buf[:n], from)
		return err
	case "udp-ping":
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(args[2])); err != nil {
			return err
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		fmt.Println(string(buf[:n]))
		return nil
	case "garbage":
		c, err := dial(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05garbage"))
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("waiting for the server to close: %w", err)
		}
		fmt.Println("closed")
		return nil
	case "read-one":
		c, err := dial(addr)
		if errors.Is(err, syscall.ECONNRESET) {
			// The agent accepted and reset before this process got back from connect():
			// on a busy machine that is as quick as a refused destination can fail.
			fmt.Println(`reset "" during connect`)
			return nil
		}
		if err != nil {
			fmt.Println("dial-error", err)
			return nil
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		switch {
		case err == nil:
			fmt.Printf("eof %q\n", b)
		case errors.Is(err, syscall.ECONNRESET):
			fmt.Printf("reset %q\n", b)
		default:
			fmt.Printf("error %q %v\n", b, err)
		}
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func dial(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, 20*time.Second)
}

// stream is n deterministic pseudo-random bytes, so both ends can know the hash.
func stream(n, seed int) io.Reader {
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	return io.LimitReader(readerFunc(func(p []byte) (int, error) {
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return len(p), nil
	}), int64(n))
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func streamHash(n, seed int) string {
	h := sha256.New()
	io.Copy(h, stream(n, seed))
	return hex.EncodeToString(h.Sum(nil))
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
