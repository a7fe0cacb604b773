package orchestrator

import (
	"fmt"
	"sort"
	"strings"
)

// PartialError reports an operation that failed on some nodes and not on
// others; cmd maps it to exit code 3.
type PartialError struct {
	Op     string
	Failed map[string]error // by node name
	Total  int
}

func (e *PartialError) Error() string {
	names := make([]string, 0, len(e.Failed))
	for n := range e.Failed {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%s failed on %d of %d nodes:", e.Op, len(e.Failed), e.Total)
	for _, n := range names {
		fmt.Fprintf(&b, "\n  node %q: %v", n, e.Failed[n])
	}
	return b.String()
}

// Unwrap exposes the per-node errors to errors.Is and errors.As.
func (e *PartialError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, err := range e.Failed {
		errs = append(errs, err)
	}
	return errs
}

// nodeErrors turns per-node results into nil, the only error when all of
// one node failed, or a *PartialError.
func nodeErrors(op string, failed map[string]error, total int) error {
	if len(failed) == 0 {
		return nil
	}
	if total == 1 {
		for n, err := range failed {
			return fmt.Errorf("%s on node %q: %w", op, n, err)
		}
	}
	return &PartialError{Op: op, Failed: failed, Total: total}
}
