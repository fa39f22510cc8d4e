package ca

// Names of the files inside the CA's directory. root.crt and root.key are the first
// root, made when the CA first starts; a directory that has never rotated holds only
// them. Roots added later live in RootsDir, and StateFile says which root is in which
// state. BundleFile always holds the roots agents should trust, for their --ca-root.
const (
	RootCertFile = "root.crt"
	RootKeyFile  = "root.key"
	StateFile    = "roots.json"
	RootsDir     = "roots"
	BundleFile   = "bundle.crt"
	LockFile     = ".lock"
)
