package workloadfile

import "testing"

// FuzzParse checks that no file, however mangled, makes Parse panic, and that whatever it
// accepts is usable: every workload it keeps has a valid identity and addresses.
func FuzzParse(f *testing.F) {
	f.Add([]byte(header + wl("a1", "default", "sa-a", "node1", `[10.244.1.11, "fd00::11"]`, "/run/netns/a1")))
	f.Add([]byte("trustDomain: cluster.local\nnamespaces:\n  - name: a\n    outsideMesh: refuse\n"))
	f.Add([]byte("trustDomain: [\n"))
	f.Add([]byte("workloads: {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, _, err := Parse(data)
		if err != nil {
			return
		}
		for _, w := range file.Workloads {
			if w.ID(file.TrustDomain).IsZero() {
				t.Fatalf("kept workload %+v has no valid SPIFFE ID", w)
			}
			if len(w.IPs) == 0 {
				t.Fatalf("kept workload %+v has no address", w)
			}
		}
	})
}
