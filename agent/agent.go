package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/kubesource"
	"github.com/veil-mesh/veil/agent/workloadfile"
	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/filewatch"
	"github.com/veil-mesh/veil/redirect"
	"github.com/veil-mesh/veil/tlsengine"
)

// Agent is one node's veil daemon.
type Agent struct {
	cfg     Config
	log     zerolog.Logger
	level   *logLevel
	errs    *errorRing
	started time.Time
	metrics *metrics

	signer *trackedSigner
	policy policyStore
	// policyLog is for lines a client can cause one of per connection.
	policyLog zerolog.Logger
	peers     *peerTable
	// namespaces are the workload file's per-namespace settings, read per connection.
	namespaces atomic.Pointer[map[string]workloadfile.Namespace]
	// file is the workload file in force, whose workloads policy checks look up.
	file atomic.Pointer[workloadfile.File]

	// attached and fileRead feed readiness: the programs are attached, the workload file
	// has been read at least once.
	attached, fileRead atomic.Bool

	mu sync.Mutex
	// red, ids and engine are set once during startup, while the admin and metrics
	// servers may already be reading them: read them with redirector, identities and
	// dataPath.
	red       *redirect.Redirector
	ids       *tlsengine.IdentityStore
	engine    *tlsengine.Engine
	td        spiffeid.TrustDomain
	workloads map[string]*workload // by namespace/name, this node's only
	fileErr   error
	problems  []error
	// loggedProblems are the problems of the last reading, logged already.
	loggedProblems map[string]bool

	// kube is the Kubernetes source with --kubernetes, once started; the CNI endpoint
	// asks it about pods.
	kube atomic.Pointer[kubesource.Source]

	// adopted are the listeners a predecessor handed over, until workloads take them.
	adopted adopted
	// handoffs brings a successor's connection to the loop; stopServing closes what a
	// successor needs to own: the admin, metrics and handoff sockets.
	handoffs    chan handoffReq
	stopServing []func()

	// heap is used on the loop's goroutine alone: apply, retryFailed and the loop's tick.
	heap heapReleaser
}

// Run starts the agent and serves until ctx ends. It returns an error only for what stops
// the whole node from working (a kernel without the hooks, no admin socket); trouble with
// one workload is logged and the others keep being served.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	a := newAgent(cfg, log)
	// A running agent gives its listeners up before anything of this one binds what it
	// holds: the metrics port, the admin socket.
	ad, err := takeOver(cfg.AdminSocket)
	if err != nil {
		return err
	}
	if ad != nil {
		a.adopted = ad
		a.log.Info().Int(fieldWorkloads, len(ad)).Msg("took over the running agent's listeners")
	}
	if n, err := raiseFileLimit(); err != nil {
		a.log.Warn().Err(err).Msg("raising the open-file limit")
	} else {
		a.log.Info().Uint64(fieldOpenFiles, n).Msg("open-file limit")
	}
	if cfg.MetricsAddr != "" {
		if err := a.serveMetrics(ctx, cfg.MetricsAddr); err != nil {
			return err
		}
	}

	red, err := redirect.Load(redirect.Config{
		Cgroup: cfg.Cgroup, PinDir: cfg.PinDir, Mark: cfg.Mark, DeliveryMark: cfg.DeliveryMark,
		HBONEPort: cfg.HBONEPort, Exclude: cfg.Exclude,
	})
	if err != nil {
		return fmt.Errorf("loading BPF programs for cgroup %s: %w", cfg.Cgroup, err)
	}
	defer red.Close()
	a.mu.Lock()
	a.red = red
	a.mu.Unlock()
	a.attached.Store(true)
	progs := red.Programs()
	names := make([]string, len(progs))
	for i, p := range progs {
		names[i] = p.Name
	}
	a.log.Info().Strs(fieldPrograms, names).Str(fieldCgroup, cfg.Cgroup).
		Msg("BPF programs attached")

	client, err := caclient.NewClient(cfg.CAAddr, cfg.CARoot, cfg.NodeTokenFile)
	if err != nil {
		return fmt.Errorf("setting up the CA client: %w", err)
	}
	a.signer = &trackedSigner{c: client}

	stopAdmin, err := a.serveAdmin(ctx)
	if err != nil {
		return err
	}
	defer stopAdmin()
	stopHandoff, err := a.serveHandoff()
	if err != nil {
		return err
	}
	defer stopHandoff()
	a.stopServing = append(a.stopServing, stopAdmin, stopHandoff)

	readings := make(chan fileReading)
	policies := make(chan policyReading)
	var watches sync.WaitGroup
	// The watches end with the loop, which also ends when the agent hands over.
	watchCtx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	var file *workloadfile.File
	if cfg.Kubernetes {
		file, err = a.startKube(watchCtx, &watches, readings, policies)
	} else {
		file, err = a.firstFiles(ctx)
	}
	if err != nil {
		return err
	}
	ids := tlsengine.NewIdentityStore(a.signer, file.TrustDomain, a.log)
	defer ids.Close()
	engine := tlsengine.NewEngine(tlsengine.Config{
		TrustDomain: file.TrustDomain, Bundle: ids.Bundle(), Peers: a.peers, Log: a.log,
		HBONEPort: cfg.HBONEPort, Observer: a.metrics,
		AgentPorts:     []uint16{cfg.OutboundPort, cfg.InboundPort},
		SameNodeDirect: cfg.SameNodeDirect,
	})
	a.mu.Lock()
	a.td, a.ids, a.engine = file.TrustDomain, ids, engine
	a.mu.Unlock()
	a.apply(ctx, file, nil)
	a.adopted.closeRest()
	a.pruneStale()

	// File changes and retries are handled on this goroutine alone, so an enrollment
	// never races another of the same pod; Watch is waited for before the workloads are
	// let go, so none is enrolled after.
	if !cfg.Kubernetes {
		a.watchFiles(watchCtx, &watches, readings, policies)
	}
	handedOff := a.loop(ctx, readings, policies)
	stopWatches()
	watches.Wait()
	if handedOff {
		a.drain()
	}
	a.detachAll()
	return nil
}

// drain waits for this agent's open connections to end, once a successor serves the new
// ones, and resets those still open at DrainTimeout. A stop signal does not cut it
// short: the successor took over, so finishing the connections is all that is left.
func (a *Agent) drain() {
	e := a.dataPath()
	deadline := time.Now().Add(a.cfg.DrainTimeout)
	a.log.Info().Int(fieldOpen, e.Open()).Stringer(fieldDeadline, a.cfg.DrainTimeout).
		Msg("handed over to a new agent; draining")
	// Polled, not signalled: the engine has no event for its last connection, and a
	// tenth of a second is nothing next to a drain.
	for e.Open() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := e.ResetAll(); n > 0 {
		a.log.Warn().Int(fieldOpen, n).Msg("drain deadline passed; resetting open connections")
		return
	}
	a.log.Info().Msg("drained")
}

// firstFiles waits until the workload and policy files are usable.
func (a *Agent) firstFiles(ctx context.Context) (*workloadfile.File, error) {
	file, err := a.firstWorkloadFile(ctx)
	if err != nil {
		return nil, err
	}
	return file, a.firstPolicy(ctx)
}

// watchFiles watches the workload and policy files, feeding readings and policies.
func (a *Agent) watchFiles(ctx context.Context, watches *sync.WaitGroup,
	readings chan<- fileReading, policies chan<- policyReading) {
	cfg := a.cfg
	watches.Go(func() {
		workloadfile.Watch(ctx, cfg.WorkloadFile, cfg.ReloadEvery,
			func(f *workloadfile.File, problems []error, err error) {
				select {
				case readings <- fileReading{f, problems, err}:
				case <-ctx.Done():
				}
			})
	})
	if cfg.PolicyFile != "" {
		watches.Go(func() {
			filewatch.Watch(ctx, cfg.PolicyFile, cfg.ReloadEvery, func(data []byte, err error) {
				select {
				case policies <- policyReading{data: data, err: err}:
				case <-ctx.Done():
				}
			})
		})
	}
}

// fileReading is one reading of the workload file by Watch.
type fileReading struct {
	f        *workloadfile.File
	problems []error
	err      error
}

// loop applies workload and policy file changes and retries failed enrollments until ctx
// ends, or until it has handed the workloads over to a successor, which it reports.
func (a *Agent) loop(ctx context.Context, readings <-chan fileReading,
	policies <-chan policyReading) (handedOff bool) {
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	// Watch's first reading is the file just applied, unless it changed in between;
	// applying it again is harmless, announcing it as a change would mislead.
	first := true
	for {
		select {
		case <-ctx.Done():
			return false
		case req := <-a.handoffs:
			err := a.handOver(req.c)
			req.c.Close()
			close(req.done)
			if err == nil {
				return true
			}
			a.errorEvent(err, "handoff failed").Msg("handoff to a new agent failed; still serving")
		case r := <-readings:
			if first && r.err == nil && r.f.TrustDomain == a.td {
				a.apply(ctx, r.f, r.problems)
			} else {
				a.onWorkloadFile(ctx, r.f, r.problems, r.err)
			}
			first = false
		case r := <-policies:
			a.onPolicyFile(r)
		case <-t.C:
			a.retryFailed(ctx)
			a.heap.tick(time.Now())
		}
	}
}

// newAgent makes the agent's in-memory state; Run starts it.
func newAgent(cfg Config, log zerolog.Logger) *Agent {
	level := newLogLevel(log.GetLevel())
	log = level.wrap(log)
	a := &Agent{
		cfg: cfg, log: log, level: level, errs: newErrorRing(20), started: time.Now(),
		handoffs: make(chan handoffReq),
		metrics:  newMetrics(cfg.Version), peers: newPeerTable(), workloads: map[string]*workload{},
	}
	a.policyLog = a.log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second})
	if cfg.AccessLog {
		a.metrics.accessLog = &a.log
	}
	a.metrics.reg.MustRegister(newStateCollector(a))
	return a
}

func (a *Agent) redirector() *redirect.Redirector {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.red
}

func (a *Agent) identities() *tlsengine.IdentityStore {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ids
}

func (a *Agent) dataPath() *tlsengine.Engine {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.engine
}

// retryEvery is how often workloads that could not be enrolled are tried again: a netns
// that does not exist yet, or a CA that did not answer, usually fixes itself.
const retryEvery = 5 * time.Second

// retryFailed tries again to enroll the workloads whose enrollment failed.
func (a *Agent) retryFailed(ctx context.Context) {
	a.mu.Lock()
	var failed []*workload
	for _, w := range a.workloads {
		if w.failure() != nil {
			failed = append(failed, w)
		}
	}
	a.mu.Unlock()
	enrolled := 0
	for _, old := range failed {
		if ctx.Err() != nil {
			return
		}
		w := a.enroll(ctx, old.spec, old.failure())
		a.mu.Lock()
		a.workloads[key(old.spec)] = w
		a.mu.Unlock()
		if w.failure() == nil {
			enrolled++
		}
	}
	if enrolled > 0 {
		a.heap.enrolled(time.Now())
	}
}

// pruneStale forgets the pods an earlier agent on this node enrolled that this one does
// not want: until then they stayed closed, which is right while they might come back, and
// wrong once the workload file says they are gone. Pods still wanted are kept even if
// their enrollment failed, so they stay closed until it succeeds.
func (a *Agent) pruneStale() {
	keepNetns := map[uint64]bool{}
	keepAddrs := map[netip.Addr]bool{}
	a.mu.Lock()
	specs := make([]workloadfile.Workload, 0, len(a.workloads))
	for _, w := range a.workloads {
		specs = append(specs, w.spec)
	}
	a.mu.Unlock()
	for _, spec := range specs {
		for _, ip := range spec.IPs {
			keepAddrs[ip] = true
		}
		if ns, err := redirect.OpenNetns(spec.Netns); err == nil {
			keepNetns[ns.Cookie()] = true
			ns.Close()
		}
	}
	if err := a.red.Prune(keepNetns, keepAddrs); err != nil {
		a.log.Warn().Err(err).Msg("forgetting pods of an earlier agent")
	}
}

// firstWorkloadFile waits until the workload file can be used: the trust domain comes from
// it, and nothing can be enrolled before.
func (a *Agent) firstWorkloadFile(ctx context.Context) (*workloadfile.File, error) {
	var lastErr string
	for {
		f, problems, err := workloadfile.Load(a.cfg.WorkloadFile)
		if err == nil {
			a.mu.Lock()
			a.problems = problems
			a.mu.Unlock()
			return f, nil
		}
		a.setFileErr(err)
		if err.Error() != lastErr {
			a.errorEvent(err, "workload file unusable").Str(fieldFile, a.cfg.WorkloadFile).
				Msg("workload file unusable; fix it and the agent picks it up")
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(a.cfg.ReloadEvery):
		}
	}
}

func (a *Agent) setFileErr(err error) {
	a.mu.Lock()
	a.fileErr = err
	a.mu.Unlock()
}

func (a *Agent) onWorkloadFile(ctx context.Context, f *workloadfile.File, problems []error,
	err error) {
	if err != nil {
		a.setFileErr(err)
		a.errorEvent(err, "workload file unusable").Str(fieldFile, a.cfg.WorkloadFile).
			Msg("workload file unusable; keeping the workloads already enrolled")
		return
	}
	if f.TrustDomain != a.td {
		err := fmt.Errorf("trust domain changed from %s to %s: "+
			"restart the agent to change it", a.td, f.TrustDomain)
		a.setFileErr(err)
		a.errorEvent(err, "workload file change refused").Str(fieldFile, a.cfg.WorkloadFile).
			Msg("workload file change refused")
		return
	}
	if a.cfg.Kubernetes {
		a.log.Debug().Int(fieldWorkloads, len(f.Workloads)).Msg("mesh pods changed")
	} else {
		a.log.Info().Str(fieldFile, a.cfg.WorkloadFile).Msg("workload file changed")
	}
	a.apply(ctx, f, problems)
}

// apply makes the enrolled set match the file: workloads that left this node or changed
// are unenrolled, new ones enrolled, and the table of expected peer identities replaced.
func (a *Agent) apply(ctx context.Context, f *workloadfile.File, problems []error) {
	a.logProblems(problems)
	a.peers.replace(f)
	a.namespaces.Store(&f.Namespaces)
	a.file.Store(f)

	want := map[string]workloadfile.Workload{}
	for _, w := range f.Workloads {
		if w.Node == a.cfg.Node {
			want[key(w)] = w
		}
	}

	a.fileRead.Store(true)
	a.mu.Lock()
	a.fileErr = nil
	if problems != nil {
		a.problems = problems
	}
	var stale []*workload
	relabelled := false
	for k, cur := range a.workloads {
		w, ok := want[k]
		if !ok || !sameWorkload(cur.spec, w) {
			stale = append(stale, cur)
			delete(a.workloads, k)
			continue
		}
		if !maps.Equal(cur.labels(), w.Labels) {
			cur.setLabels(w.Labels)
			relabelled = true
		}
	}
	var fresh []workloadfile.Workload
	for k, w := range want {
		if _, ok := a.workloads[k]; !ok {
			fresh = append(fresh, w)
		}
	}
	a.mu.Unlock()

	for _, w := range stale {
		a.unenroll(w)
	}
	for _, spec := range fresh {
		w := a.enroll(ctx, spec, nil)
		a.mu.Lock()
		a.workloads[key(spec)] = w
		a.mu.Unlock()
	}
	if len(fresh) > 0 {
		a.heap.enrolled(time.Now())
	}
	if relabelled {
		a.enforcePolicy() // policies select by label
	}
}

// detachAll lets go of every workload when the agent stops, leaving their pods steered
// into listeners that are about to close, so they fail closed until the next agent.
func (a *Agent) detachAll() {
	a.mu.Lock()
	all := make([]*workload, 0, len(a.workloads))
	for _, w := range a.workloads {
		all = append(all, w)
	}
	a.mu.Unlock()
	for _, w := range all {
		w.release(a.log, false)
	}
}

func key(w workloadfile.Workload) string { return w.Namespace + "/" + w.Name }

// sameWorkload reports whether a and b can be served by one enrollment. Their addresses
// are compared as sets: the kubelet reports a pod's addresses primary family first,
// which need not be the order the CNI plugins gave them in before it did.
func sameWorkload(a, b workloadfile.Workload) bool {
	if a.ServiceAccount != b.ServiceAccount || a.Netns != b.Netns || len(a.IPs) != len(b.IPs) {
		return false
	}
	as, bs := slices.Clone(a.IPs), slices.Clone(b.IPs)
	slices.SortFunc(as, netip.Addr.Compare)
	slices.SortFunc(bs, netip.Addr.Compare)
	return slices.Equal(as, bs)
}

// trackedSigner remembers whether the CA answered last time, for status and readiness.
type trackedSigner struct {
	c *caclient.Client

	mu      sync.Mutex
	lastOK  time.Time
	lastErr error
}

func (s *trackedSigner) Sign(
	ctx context.Context, csr []byte,
) (chain, bundle []*x509.Certificate, err error) {
	chain, bundle, err = s.c.Sign(ctx, csr)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.lastErr = err
	} else {
		s.lastOK, s.lastErr = time.Now(), nil
	}
	return chain, bundle, err
}

func (s *trackedSigner) state() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastOK, s.lastErr
}

// logProblems logs the workloads left out, each once while it stays out: the Kubernetes
// API sends a new picture of the mesh with every pod change anywhere in the cluster.
func (a *Agent) logProblems(problems []error) {
	seen := make(map[string]bool, len(problems))
	for _, p := range problems {
		seen[p.Error()] = true
		if !a.loggedProblems[p.Error()] {
			a.errorEvent(p, "workload left out").Str(fieldFile, a.cfg.WorkloadFile).
				Msg("workload left out")
		}
	}
	a.loggedProblems = seen
}
