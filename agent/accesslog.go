package agent

import (
	"time"

	"github.com/rs/zerolog"

	"github.com/veil-mesh/veil/tlsengine"
)

// accessLogMessage is the message of every access log line, so they can be selected
// from the rest of the agent's log.
const accessLogMessage = "connection complete"

// writeAccessLog writes one line for a closed connection: who talked to whom, from and
// to where, how much, for how long, and how it ended. An identity not proven by mTLS is
// left out rather than guessed.
func writeAccessLog(log *zerolog.Logger, ci tlsengine.ConnInfo, reason string) {
	src, dst := ci.Local, ci.Remote
	srcID, dstID := ci.Workload, ci.Peer
	sent, recv := ci.BytesSent, ci.BytesReceived
	if reporterOf(ci.Direction) == reporterDestination {
		src, dst = ci.Remote, ci.Local
		srcID, dstID = ci.Peer, ci.Workload
		sent, recv = recv, sent
	}
	ev := log.Info().Str(fieldDirection, ci.Direction.String()).
		Stringer(fieldSrcAddr, src).Stringer(fieldDstAddr, dst)
	if !srcID.IsZero() {
		ev = ev.Stringer(fieldSrcIdentity, srcID)
	}
	if !dstID.IsZero() {
		ev = ev.Stringer(fieldDstIdentity, dstID)
	}
	ev.Uint64(fieldBytesSent, sent).Uint64(fieldBytesRecv, recv).
		Dur(fieldDuration, time.Since(ci.Start)).Str(fieldReason, reason).
		Msg(accessLogMessage)
}
