package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/workloadfile"
	"github.com/veil-mesh/veil/ca/caclient"
)

// Defaults for Config.
const (
	DefaultCertTTL      = 24 * time.Hour
	DefaultReloadPeriod = 2 * time.Second
)

// maxRequestBytes bounds a sign request. A P-256 CSR in PEM is about 600 bytes; the
// limit keeps a client from making the CA buffer arbitrary amounts of memory.
const maxRequestBytes = 64 << 10

// Refusals are logged at most refusedLogBurst a refusedLogPeriod: anyone who can reach
// the port can be refused, and without a limit could fill the CA's log. The first lines
// of a burst are kept, so the start of a flood and who sent it are still on record.
const (
	refusedLogBurst  = 10
	refusedLogPeriod = time.Second
)

// Config is what a Server needs.
type Config struct {
	// Dir holds the roots (see RootCertFile and StateFile) and BundleFile; created 0700
	// with a first root on first start. In plug-in mode it holds only BundleFile. In
	// Kubernetes mode it is the working copy of the Secret RootSecret.
	Dir string
	// Plugin, when its CertPath is set, makes the CA sign with the intermediate it names
	// instead of with the roots in Dir.
	Plugin PluginFiles
	// WorkloadsPath is the workload file that says which workload runs on which node
	// (not used in Kubernetes mode). It and the signing state (Dir's roots, or the
	// Plugin files) are polled every ReloadPeriod (DefaultReloadPeriod when zero).
	WorkloadsPath string
	ReloadPeriod  time.Duration
	// NodeTokensPath is the node tokens file, read once at start (not used in
	// Kubernetes mode).
	NodeTokensPath string
	// CertTTL is the lifetime of issued certificates (DefaultCertTTL when zero).
	CertTTL time.Duration
	Log     zerolog.Logger
}

// Server is a running CA.
type Server struct {
	cfg       Config
	log       zerolog.Logger
	refusals  zerolog.Logger // log, sampled; see refusedLogBurst
	auth      atomic.Pointer[authority]
	reloadMu  sync.Mutex // serializes reloads, which Serve on several listeners would run
	authErr   string     // the last reload error logged, under reloadMu
	nodes     authenticator
	place     placement
	serving   *servingCert
	workloads workloadPlacement // file mode: the workload file's latest usable version
	now       func() time.Time
	// background runs while Serve does: the watches and publishers of the CA's mode.
	background []func(context.Context)
}

// NewServer loads (or on first start creates) the roots, or the plug-in files, the node
// tokens and the workload file. It fails if any of them cannot be used, so a
// misconfigured CA stops at start rather than refusing every request later.
func NewServer(cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.openAuthority(); err != nil {
		return nil, err
	}

	tokens, err := loadNodeTokens(cfg.NodeTokensPath)
	if err != nil {
		return nil, err
	}
	s.nodes = tokens
	f, problems, err := workloadfile.Load(cfg.WorkloadsPath)
	if err != nil {
		return nil, err
	}
	s.setWorkloads(f, problems)
	s.place = &s.workloads
	s.background = append(s.background, func(ctx context.Context) {
		workloadfile.Watch(ctx, s.cfg.WorkloadsPath, s.cfg.ReloadPeriod, s.onWorkloadFile)
	})
	return s, nil
}

// newServer checks what every mode needs and fills in the defaults. The caller loads the
// signing state (openAuthority) and sets how nodes are authenticated and placed.
func newServer(cfg Config) (*Server, error) {
	if cfg.CertTTL == 0 {
		cfg.CertTTL = DefaultCertTTL
	}
	if cfg.ReloadPeriod == 0 {
		cfg.ReloadPeriod = DefaultReloadPeriod
	}
	if cfg.CertTTL < time.Second {
		return nil, fmt.Errorf("certificate TTL %s is too short; use at least 1s", cfg.CertTTL)
	}
	if cfg.Dir == "" {
		return nil, errors.New("no CA directory; set --dir")
	}
	if (cfg.Plugin.CertPath == "") != (cfg.Plugin.KeyPath == "") ||
		(cfg.Plugin.BundlePath != "" && cfg.Plugin.CertPath == "") {
		return nil, errors.New("plug-in mode needs both --signing-cert and --signing-key; " +
			"--trust-bundle goes with them")
	}

	s := &Server{cfg: cfg, log: cfg.Log, now: time.Now}
	s.refusals = cfg.Log.Sample(&zerolog.BurstSampler{
		Burst: refusedLogBurst, Period: refusedLogPeriod})
	s.serving = &servingCert{auth: s.auth.Load, now: s.now}
	return s, nil
}

// BundlePEM returns the roots agents are to trust, as PEM: what every answer carries as
// its bundle, and what BundleFile in the CA's directory holds.
func (s *Server) BundlePEM() []byte { return []byte(certsPEM(s.auth.Load().bundle)) }

// TLSConfig returns the server side of the CA's TLS: 1.3 only, with a certificate for
// caclient.ServerName issued from the root.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: s.serving.get}
}

// Serve answers requests on ln with TLS until ctx is done, then shuts down gracefully
// and returns nil. It also watches the signing state and, in file mode, the workload file
// (in Kubernetes mode, it saves the roots to their Secret and publishes the bundle) for as
// long as it runs. Serve closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, run := range s.background {
		go run(ctx)
	}
	go s.watchAuthority(ctx)

	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          log.New(debugWriter{s.log}, "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()

	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

// debugWriter sends net/http's own messages (mostly failed TLS handshakes from clients
// that do not trust the root) to the logger at debug level.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// onWorkloadFile takes each new version of the workload file. A file that cannot be
// used is logged and the previous version kept: refusing every node because of a typo
// would stop all renewals.
func (s *Server) onWorkloadFile(f *workloadfile.File, problems []error, err error) {
	if err != nil {
		s.log.Error().Err(err).Msg("workload file unusable; keeping the previous version")
		return
	}
	if reflect.DeepEqual(f, s.workloads.Load()) {
		return
	}
	s.setWorkloads(f, problems)
}

func (s *Server) setWorkloads(f *workloadfile.File, problems []error) {
	for _, p := range problems {
		s.log.Warn().Err(p).Msg("workload left out")
	}
	s.workloads.Store(f)
	s.log.Info().Str(logPath, s.cfg.WorkloadsPath).
		Str(logTrustDomain, f.TrustDomain.Name()).
		Int(logWorkloads, len(f.Workloads)).
		Msg("loaded workload file")
}

// Handler returns the CA's HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(caclient.SignPath, s.handleSign)
	return mux
}

func (s *Server) handleSign(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "use POST")
		return
	}

	node, err := s.nodes.authenticate(r.Context(), bearer(r))
	if err != nil {
		s.refuseAuth(w, r, err)
		return
	}

	var req caclient.SignRequest
	if status, msg := decodeRequest(w, r, &req); status != 0 {
		s.refuse(w, r, status, node, spiffeid.ID{}, msg)
		return
	}

	pub, id, err := checkCSR(req.CSR, s.place.trustDomain())
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, node, id, err.Error())
		return
	}
	if why := s.place.refusal(node, id); why != "" {
		s.refuse(w, r, http.StatusForbidden, node, id, why)
		return
	}

	s.issue(w, r, node, id, pub)
}

func (s *Server) issue(w http.ResponseWriter, r *http.Request, node string, id spiffeid.ID,
	pub any) {
	a := s.auth.Load()
	chain, err := a.issueSVID(pub, id, s.now(), s.cfg.CertTTL)
	if err != nil {
		s.log.Error().Err(err).Str(logNode, node).Stringer(logIdentity, id).
			Msg("issuing certificate")
		writeError(w, http.StatusInternalServerError, "issuing certificate failed; see the CA log")
		return
	}

	writeJSON(w, http.StatusOK, caclient.SignResponse{
		CertChain: certsPEM(chain),
		Bundle:    certsPEM(a.bundle),
	})
	s.log.Info().Str(logNode, node).Stringer(logIdentity, id).
		Str(logSerial, chain[0].SerialNumber.Text(16)).Time(logExpires, chain[0].NotAfter).
		Str(logSigner, a.signerID()).Msg("certificate issued")
}

// workloadPlacement places workloads where the workload file says they run.
type workloadPlacement struct {
	atomic.Pointer[workloadfile.File]
}

func (p *workloadPlacement) trustDomain() spiffeid.TrustDomain { return p.Load().TrustDomain }

func (p *workloadPlacement) refusal(node string, id spiffeid.ID) string {
	if onNode(p.Load(), node, id) {
		return ""
	}
	return fmt.Sprintf("no workload with identity %s runs on node %s according to the "+
		"workload file", id, node)
}

// onNode reports whether the workload file places a workload with identity id on node.
func onNode(f *workloadfile.File, node string, id spiffeid.ID) bool {
	for _, w := range f.Workloads {
		if w.Node == node && w.ID(f.TrustDomain) == id {
			return true
		}
	}
	return false
}

func bearer(r *http.Request) string {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(token)
}

// decodeRequest reads a JSON body of at most maxRequestBytes. It returns a zero status
// on success, or the status and message to refuse with.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any) (int, string) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request larger than %d bytes", maxRequestBytes)
	case err != nil:
		return http.StatusBadRequest, "decoding request: " + err.Error()
	}
	return 0, ""
}

// refuse answers with an error and logs the refusal, rate-limited, with what is known of
// the caller.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, node string,
	id spiffeid.ID, msg string) {
	s.refuseWith(w, r, status, node, id, msg, nil)
}

// refuseWith is refuse with the cause of a failure on the CA's side, which is logged but
// not sent.
func (s *Server) refuseWith(w http.ResponseWriter, r *http.Request, status int, node string,
	id spiffeid.ID, msg string, cause error) {
	ev := s.refusals.Warn().Int(logStatus, status).Str(logRemote, r.RemoteAddr).
		Str(logReason, msg)
	if cause != nil {
		ev = ev.Err(cause)
	}
	if node != "" {
		ev = ev.Str(logNode, node)
	}
	if !id.IsZero() {
		ev = ev.Stringer(logIdentity, id)
	}
	ev.Msg("request refused")
	writeError(w, status, msg)
}

// refuseAuth answers a request whose token did not name a node. A failure on the CA's
// side (the Kubernetes API unreachable) is logged with its cause, which the caller is
// not sent.
func (s *Server) refuseAuth(w http.ResponseWriter, r *http.Request, err error) {
	var af *authError
	if !errors.As(err, &af) {
		af = &authError{status: http.StatusServiceUnavailable, cause: err,
			msg: "checking the node token failed; see the CA log"}
	}
	s.refuseWith(w, r, af.status, "", spiffeid.ID{}, af.msg, af.cause)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, caclient.ErrorResponse{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client has gone if this fails; nothing to do
}

// certsPEM encodes certificates as consecutive PEM blocks.
func certsPEM(certs []*x509.Certificate) string {
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}
