package sshx_test

import (
	"bytes"
	"path/filepath"
	"testing"
)

// BenchmarkUpload uploads 15 MB, verified and renamed, to each server.
func BenchmarkUpload(b *testing.B) {
	data := randomBytes(b, 15<<20)
	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			srv := s.start(b)
			c := dial(b, config(b, srv))
			target := filepath.Join(b.TempDir(), "blob")
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := c.Upload(b.Context(), bytes.NewReader(data), target, 0o644); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

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
