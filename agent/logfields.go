package agent

// Log field names, defined once so every line about the same thing can be found with the
// same query.
const (
	fieldOpenFiles = "openFiles"
	fieldWorkload  = "workload"
	fieldIdentity  = "identity"
	fieldNetns     = "netns"
	fieldIPs       = "ips"
	fieldNode      = "node"
	fieldFile      = "file"
	fieldPrograms  = "programs"
	fieldSocket    = "socket"
	fieldAddr      = "addr"
	fieldLogLevel  = "logLevel"
	fieldPrevious  = "previous"
	fieldTook      = "took"
	fieldListener  = "listener"
	fieldCgroup    = "cgroup"
	fieldClosed    = "closed"
	fieldWorkloads = "workloads"
	fieldOpen      = "open"
	fieldDeadline  = "deadline"

	fieldPeerAuthentications   = "peerAuthentications"
	fieldAuthorizationPolicies = "authorizationPolicies"
	fieldRule                  = "rule"
	fieldWouldAllow            = "wouldAllow"
	fieldVerdict               = "verdict"
	fieldMode                  = "mode"

	// Access log fields. They follow ztunnel's access log, so queries written for Istio
	// ambient find veil's lines too. src is the end that opened the connection, dst the
	// end it was for; bytes are counted from src's side.
	fieldDirection   = "direction"
	fieldSrcAddr     = "src.addr"
	fieldSrcIdentity = "src.identity"
	fieldDstAddr     = "dst.addr"
	fieldDstIdentity = "dst.identity"
	fieldBytesSent   = "bytes_sent"
	fieldBytesRecv   = "bytes_recv"
	fieldDuration    = "duration"
	fieldReason      = "reason"
)
