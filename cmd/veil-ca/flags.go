package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// stringFlag defines a flag whose default comes from env when that is set; the help text
// names the variable.
func stringFlag(fs *pflag.FlagSet, p *string, name, env, def, usage string) {
	if v, ok := os.LookupEnv(env); ok {
		def = v
	}
	fs.StringVar(p, name, def, usage+" (env "+env+")")
}

// durationFlag is stringFlag for durations. A malformed environment value is returned
// so that the command fails with it instead of silently using the default.
func durationFlag(fs *pflag.FlagSet, p *time.Duration, name, env string, def time.Duration,
	usage string) error {
	if v, ok := os.LookupEnv(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s=%q: %w; use a duration such as 24h or 30s", env, v, err)
		}
		def = d
	}
	fs.DurationVar(p, name, def, usage+" (env "+env+")")
	return nil
}

// boolFlag is stringFlag for booleans; a malformed environment value is returned, as
// durationFlag does.
func boolFlag(fs *pflag.FlagSet, p *bool, name, env string, def bool, usage string) error {
	if v, ok := os.LookupEnv(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%s=%q: %w; use true or false", env, v, err)
		}
		def = b
	}
	fs.BoolVar(p, name, def, usage+" (env "+env+")")
	return nil
}
