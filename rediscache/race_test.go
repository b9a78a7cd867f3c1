//go:build race

package rediscache_test

// The race detector slows everything down about tenfold; load tests lighten
// their load so that they measure the protocol, not a starved CPU.
func init() { raceEnabled = true }
