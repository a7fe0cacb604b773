package sshx_test

import (
	"testing"
)

// BenchmarkRun measures one command round trip on a reused connection.
func BenchmarkRun(b *testing.B) {
	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			srv := s.start(b)
			c := dial(b, config(b, srv))
			for b.Loop() {
				if _, err := c.Run(b.Context(), []string{"true"}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
