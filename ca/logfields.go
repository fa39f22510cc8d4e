package ca

// Log field names, defined once so every line about the same thing can be found with the
// same query.
const (
	logNode        = "node"
	logIdentity    = "identity"
	logSerial      = "serial"
	logExpires     = "expires"
	logRemote      = "remote"
	logReason      = "reason"
	logStatus      = "status"
	logDir         = "dir"
	logPath        = "path"
	logTrustDomain = "trustDomain"
	logWorkloads   = "workloads"
	logRoot        = "root"
	logSigner      = "signer"
	logSubject     = "subject"
	logBundle      = "bundle"
	logMode        = "mode"
	logNamespace   = "namespace"
	logSecret      = "secret"
	logConfigMap   = "configMap"
	logAudience    = "audience"
	logAgent       = "agentServiceAccount"
	logResource    = "resource"
)
