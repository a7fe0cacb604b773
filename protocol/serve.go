package protocol

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve serves h on ln until ctx ends: HTTP/1.1 and cleartext HTTP/2 when
// tlsConfig is nil (loopback, SSH tunnels), HTTP/2 over TLS otherwise.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	if tlsConfig != nil {
		p.SetHTTP2(true)
		srv.TLSConfig = tlsConfig
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	srv.Protocols = p
	// A relay carries all its workers' streams on one connection.
	srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 1 << 16}
	shutDown := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shutDown)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
	})
	var err error
	if tlsConfig != nil {
		err = srv.ServeTLS(ln, "", "") // adds h2 to the ALPN list
	} else {
		err = srv.Serve(ln)
	}
	// srv.Serve returns as soon as Shutdown closes the listener: return
	// only once the streams have ended, so that the caller may close what
	// the handlers use.
	if stop() {
		_ = srv.Close() // Serve failed on its own: end its connections
	} else {
		<-shutDown
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
