// Package slogfile makes the logger of pampactl's commands and of the
// worker-only build: text to stderr, and to a log file too when one is
// named.
package slogfile

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
)

// New logs to stderr and, when path is not "", appends to path (its
// directory made if missing); verbose adds debug lines. The returned
// func closes the file.
func New(stderr io.Writer, path string, verbose bool) (*slog.Logger, func(), error) {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	handlers := []slog.Handler{slog.NewTextHandler(stderr, opts)}
	closeFn := func() {}
	if path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, nil, fmt.Errorf("log file %s: %w", path, err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("log file %s: %w", path, err)
		}
		handlers = append(handlers, slog.NewTextHandler(f, opts))
		closeFn = func() { f.Close() }
	}
	return slog.New(slog.NewMultiHandler(handlers...)), closeFn, nil
}
