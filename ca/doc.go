// Package ca is veil's certificate authority and the client node agents use to reach it.
//
// The CA keeps one self-signed root (ECDSA P-256) in a directory it creates with mode
// 0700: root.key (0600) and root.crt. It signs certificate signing requests from node
// agents over HTTPS (TLS 1.3) at SignPath, authenticating each agent by its node token
// and authorizing it against the workload file: a node may obtain only the identities of
// workloads the file places on that node. Keys are generated on the nodes and never
// reach the CA; the CA decides everything about the certificate except the public key and
// the SPIFFE ID, which it checks.
//
// Lifetimes: a Server owns its listener once Serve is called and closes it when Serve
// returns. A Client holds an http.Client with idle connections; call CloseIdleConnections
// when it is no longer needed.
package ca
