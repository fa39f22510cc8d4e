package redirect_test

import "testing"

func TestMapUsageCountsEnrolment(t *testing.T) {
	f := newFixture(t)
	usage := func() map[string]uint32 {
		t.Helper()
		u, err := f.r.MapUsage()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint32{}
		for _, m := range u {
			if m.MaxEntries == 0 || m.Entries > m.MaxEntries {
				t.Errorf("map %s: %d of %d entries", m.Name, m.Entries, m.MaxEntries)
			}
			got[m.Name] = m.Entries
		}
		return got
	}

	got := usage()
	// One pod with one address: its netns, its address, and its two inbound listeners.
	if got["enrolled"] != 1 || got["pod_addrs"] != 1 || got["listeners"] != 2 {
		t.Errorf("usage with one pod enrolled = %v, want enrolled 1, pod_addrs 1, listeners 2", got)
	}
	if err := f.enr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := usage(); got["enrolled"] != 0 || got["pod_addrs"] != 0 || got["listeners"] != 0 {
		t.Errorf("usage after unenrolling = %v, want enrolled, pod_addrs and listeners empty", got)
	}
}
