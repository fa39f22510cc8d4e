package tlsengine

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// certTimeProblem says, for a handshake that failed because a peer's certificate is not
// valid at this moment, which way and by how much: "expired 3m20s ago" or "not valid for
// another 2m". Clocks that disagree between nodes look like this, and the amount is what
// tells a clock problem from a certificate nobody renewed. It is "" for other failures.
func certTimeProblem(err error, now time.Time) string {
	var inv x509.CertificateInvalidError
	if !errors.As(err, &inv) || inv.Reason != x509.Expired || inv.Cert == nil {
		return ""
	}
	switch c := inv.Cert; {
	case now.After(c.NotAfter):
		return fmt.Sprintf("expired %s ago", now.Sub(c.NotAfter).Round(time.Second))
	case now.Before(c.NotBefore):
		return fmt.Sprintf("not valid for another %s", c.NotBefore.Sub(now).Round(time.Second))
	}
	return ""
}
