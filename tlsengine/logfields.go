package tlsengine

// Log field names of the data path, so that every line about a connection spells them
// the same way.
const (
	logKeyWorkload  = "workload"
	logKeyDirection = "direction"
	logKeySrc       = "src"
	logKeyDst       = "dst"
	logKeyPeer      = "peer"
	logKeyPeerAddr  = "peerAddr"
	logKeySent      = "bytesSent"
	logKeyReceived  = "bytesReceived"
	logKeyDuration  = "duration"
	logKeyStatus    = "status"
	logKeyOutcome   = "outcome"
	logKeyForwarded = "forwarded"
	logKeyCertTime  = "certTime"
	logKeyListener  = "listener"
	logKeyCount     = "count"
)
