package caclient

// ServerName is the DNS name in the CA's serving certificate, and the name clients check,
// whatever address they dial. It is the name the CA's Kubernetes Service has, so the same
// certificate serves in a cluster and in the local network-namespace cluster.
const ServerName = "veil-ca.veil-system.svc"

// SignPath is the HTTP path that signs a CSR.
const SignPath = "/v1/sign"

// SignRequest is the body of a POST to SignPath.
type SignRequest struct {
	// CSR is a PEM "CERTIFICATE REQUEST" block.
	CSR string `json:"csr"`
}

// SignResponse is the body of a successful answer from SignPath.
type SignResponse struct {
	// CertChain is the issued certificate, leaf first, as PEM "CERTIFICATE" blocks.
	CertChain string `json:"certChain"`
	// Bundle holds the roots peers are verified against, as PEM "CERTIFICATE" blocks.
	// There is more than one while a root is being rotated.
	Bundle string `json:"bundle"`
}

// ErrorResponse is the body of every answer that is not 200.
type ErrorResponse struct {
	Error string `json:"error"`
}
