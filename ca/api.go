package ca

// ServerName is the DNS name in the CA's serving certificate, and the name clients check,
// whatever address they dial. It is the name the CA's Kubernetes Service has, so the same
// certificate serves in a cluster and in the local network-namespace cluster.
const ServerName = "veil-ca.veil-system.svc"

// SignPath is the HTTP path that signs a CSR.
const SignPath = "/v1/sign"

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

// signRequest is the body of a POST to SignPath.
type signRequest struct {
	// CSR is a PEM "CERTIFICATE REQUEST" block.
	CSR string `json:"csr"`
}

// signResponse is the body of a successful answer from SignPath.
type signResponse struct {
	// CertChain is the issued certificate, leaf first, as PEM "CERTIFICATE" blocks.
	CertChain string `json:"certChain"`
	// Bundle holds the roots peers are verified against, as PEM "CERTIFICATE" blocks.
	// There is more than one while a root is being rotated.
	Bundle string `json:"bundle"`
}

// errorResponse is the body of every answer that is not 200.
type errorResponse struct {
	Error string `json:"error"`
}
