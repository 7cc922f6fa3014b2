package postgres

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"
)

// Defaults of Options.
const (
	DefaultLeaseTTL  = 45 * time.Second
	DefaultRenew     = 5 * time.Second
	DefaultStopGrace = 20 * time.Second
	DefaultPrefix    = "supervisor_"
)

// Limits on names and keys. A NOTIFY payload holds at most 8000 bytes; a
// key, the table's name and a few bytes of framing fit in it.
const (
	MaxKeyLen  = 1000 // bytes of a row's key
	MaxNameLen = 200  // bytes of a table's name and of a node's ID
)

var (
	// ErrInvalidOptions is returned by NewTable and NewStore for options
	// they cannot work with; the error says which.
	ErrInvalidOptions = errors.New("postgres: invalid options")
	// ErrInvalidKey is returned for a key or table name that is empty, too
	// long, not UTF-8 or holds a NUL byte.
	ErrInvalidKey = errors.New("postgres: invalid key")
	// ErrClosed is returned by the methods of a closed Table.
	ErrClosed = errors.New("postgres: table closed")
)

// Options configure a Table or a Store. The zero value is ready to use:
// every field has a default.
type Options struct {
	// Node is this node's ID, unique among the nodes that open the same
	// table. Default hostname-pid-random, a new one for each Table.
	Node string
	// LeaseTTL: a node that stops renewing loses its rows after this
	// (database time). Default 45s.
	LeaseTTL time.Duration
	// Renew is the period of heartbeats, lease renewals and claims.
	// Default 5s.
	Renew time.Duration
	// StopGrace is how long this node's processes need to stop: twice the
	// supervisor's StopTimeout. Default 20s. StopGrace + 2×Renew must be
	// less than LeaseTTL.
	StopGrace time.Duration
	// Prefix starts the names of the tables and of the NOTIFY channel:
	// lower-case letters, digits and '_', starting with a letter or '_',
	// at most 40 bytes. Default "supervisor_".
	Prefix string
	// Logger receives claims, losses, renewal failures and reconnects.
	// Default slog.Default().
	Logger *slog.Logger
}

var prefixPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,39}$`)

// withDefaults returns o with every zero field set to its default, or an
// error wrapping ErrInvalidOptions.
func (o Options) withDefaults() (Options, error) {
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Renew == 0 {
		o.Renew = DefaultRenew
	}
	if o.StopGrace == 0 {
		o.StopGrace = DefaultStopGrace
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Node == "" {
		o.Node = defaultNode()
	}
	switch {
	case o.LeaseTTL < 0 || o.Renew < 0 || o.StopGrace < 0:
		return o, fmt.Errorf("%w: negative duration (LeaseTTL %v, Renew %v, StopGrace %v)",
			ErrInvalidOptions, o.LeaseTTL, o.Renew, o.StopGrace)
	case o.StopGrace+2*o.Renew >= o.LeaseTTL:
		return o, fmt.Errorf("%w: StopGrace (%v) + 2×Renew (%v) must be less than LeaseTTL (%v), "+
			"or a node cut off from the database could not stop its processes before its leases expire",
			ErrInvalidOptions, o.StopGrace, o.Renew, o.LeaseTTL)
	case !prefixPattern.MatchString(o.Prefix):
		return o, fmt.Errorf("%w: Prefix %q: want lower-case letters, digits and '_', "+
			"starting with a letter or '_', at most 40 bytes", ErrInvalidOptions, o.Prefix)
	}
	if err := checkName("node", o.Node, MaxNameLen); err != nil {
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return o, nil
}

// checkName refuses what PostgreSQL text or a NOTIFY payload cannot carry.
func checkName(what, s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidKey, what)
	case len(s) > max:
		return fmt.Errorf("%w: %s of %d bytes (at most %d)", ErrInvalidKey, what, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not UTF-8", ErrInvalidKey, what, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s %q holds a NUL byte", ErrInvalidKey, what, s)
		}
	}
	return nil
}

// defaultNode returns hostname-pid-random.
func defaultNode() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	var random [4]byte
	_, _ = rand.Read(random[:]) // crypto/rand.Read never fails (Go 1.24+)
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(random[:])
}
