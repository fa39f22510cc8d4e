package main

import (
	"strings"
	"testing"
)

// --admin-group comes from the flag or from VEIL_ADMIN_GROUP, and a group the agent cannot
// use stops it with the flag named, before it does anything on the node.
func TestAdminGroupFlag(t *testing.T) {
	required := []string{"--node=n1", "--cgroup=/nonexistent/cgroup",
		"--bpffs=/nonexistent/bpffs", "--admin-socket=" + t.TempDir() + "/agent.sock",
		"--ca-addr=127.0.0.1:1", "--ca-root=/nonexistent/root.pem",
		"--node-token-file=/nonexistent/token", "--log-format=json"}
	for _, tc := range []struct{ name, env, flag, want string }{
		{"env", "veil-no-such-group", "", `--admin-group "veil-no-such-group": no group`},
		{"flag", "", "--admin-group=4294967295", "--admin-group 4294967295: a gid is 0 to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VEIL_ADMIN_GROUP", tc.env)
			cmd := newRootCmd()
			if u := cmd.Flags().Lookup("admin-group").Usage; !strings.Contains(u,
				"(env VEIL_ADMIN_GROUP)") {
				t.Errorf("--admin-group help does not name its variable: %q", u)
			}
			args := required
			if tc.flag != "" {
				args = append(args[:len(args):len(args)], tc.flag)
			}
			cmd.SetArgs(args)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("veil-agent returned %v, want an error with %q", err, tc.want)
			}
		})
	}
}
