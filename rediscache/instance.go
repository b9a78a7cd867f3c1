package rediscache

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
)

// maxHostLen bounds the host name in an instance identity.
const maxHostLen = 64

// newInstance returns the identity a Cache writes into the refresh locks it
// holds (package lock's metadata), so that an operator can tell which
// instance is refreshing: "host=<hostname> pid=<pid> cache=<8 hex digits>".
// The random part tells apart two Caches of one process. It holds nothing
// secret, and only characters that are safe to print.
func newInstance() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, host)
	if len(host) > maxHostLen {
		host = host[:maxHostLen]
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "host=" + host + " pid=" + strconv.Itoa(os.Getpid()) + " cache=" + hex.EncodeToString(b)
}

// Instance returns the identity this Cache stores in the refresh locks it
// holds: "host=<hostname> pid=<pid> cache=<8 hex digits>", where the last
// part is random per Cache. Operators see it as the lock holder (for
// instance with cmd/tokencache status); it holds no secret.
func (s *Cache) Instance() string { return s.instance }
