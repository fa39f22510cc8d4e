package agent

// Log field names, defined once so every line about the same thing can be found with the
// same query.
const (
	fieldWorkload = "workload"
	fieldIdentity = "identity"
	fieldNetns    = "netns"
	fieldIPs      = "ips"
	fieldNode     = "node"
	fieldFile     = "file"
	fieldPrograms = "programs"
	fieldSocket   = "socket"
)
