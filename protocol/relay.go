package protocol

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	Name      string   // for logs and refusals
	Upstreams []string // the dispatchers' host:port, tried in turn
	Secret    []byte   // the cluster's worker secret: peers must prove it
	TLS       *tls.Config
	Logger    *slog.Logger
}

var errStandby = errors.New("the dispatcher stands by")

// A Relay serves the workers of nodes near it and carries each worker's
// stream to the dispatcher as a stream of one shared HTTP/2 connection: a
// site of hundreds of workers costs the dispatcher one connection, and
// the relay holds no state of its own. Rows go down as the workers ask for
// them, outcomes go up as the workers send them, and acknowledgments come
// back the same way: when the upstream is cut, each worker's stream ends,
// and the worker keeps its outcomes and reconnects, as it would without a
// relay.
type Relay struct {
	cfg   RelayConfig
	log   *slog.Logger
	hc    *http.Client
	dials atomic.Int64
	first atomic.Int64 // the upstream that answered last: tried first
}

// NewRelay validates cfg.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("relay: no dispatcher address")
	}
	if len(cfg.Secret) == 0 {
		return nil, errors.New("relay: no worker secret")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, log: cfg.Logger.With("relay", cfg.Name)}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	dial := func(ctx context.Context, network, addr string, tc *tls.Config) (net.Conn, error) {
		var c net.Conn
		var err error
		if tc != nil {
			c, err = (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, network, addr)
		} else {
			c, err = d.DialContext(ctx, network, addr)
		}
		if err == nil {
			r.dials.Add(1)
			r.log.Info("relay connected to the dispatcher", "addr", addr)
		}
		return c, err
	}
	// x/net's HTTP/2 transport, not net/http's: its pool shares one dial
	// among the streams that start together, where net/http's dials once
	// per stream until a connection is up.
	tr := &http2.Transport{
		AllowHTTP:       cfg.TLS == nil, // cleartext HTTP/2 with prior knowledge
		TLSClientConfig: cfg.TLS,
		DialTLSContext: func(ctx context.Context, network, addr string, tc *tls.Config) (net.Conn, error) {
			if cfg.TLS == nil {
				tc = nil
			}
			return dial(ctx, network, addr, tc)
		},
		// A cut link sends no reset: the connection is probed when it is
		// quiet and dropped when the probe is not answered, so that new
		// streams do not wait on a dead one.
		ReadIdleTimeout: 2 * time.Second,
		PingTimeout:     2 * time.Second,
	}
	r.hc = &http.Client{Transport: tr}
	return r, nil
}

// Dials counts the connections the relay opened to dispatchers.
func (r *Relay) Dials() int64 { return r.dials.Load() }

// Close drops the relay's idle upstream connections.
func (r *Relay) Close() { r.hc.CloseIdleConnections() }

// ServeHTTP carries one worker stream: it checks the peer's secret itself
// (the dispatcher checks it again), then relays the stream to the first
// dispatcher that accepts it. A standby's refusal (503) or an unreachable
// dispatcher sends it to the next; other refusals go back to the worker.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if status, msg := admit(req, r.cfg.Secret); status != 0 {
		r.log.Warn("refused a worker connection", "addr", req.RemoteAddr, "status", status, "reason", msg)
		http.Error(w, msg, status)
		return
	}
	// The hello is read first, so that each dispatcher tried gets it: the
	// worker sends nothing more before the stream is accepted.
	body := bufio.NewReader(req.Body)
	hello, err := body.ReadBytes('\n')
	if err != nil {
		http.Error(w, "expected a hello message, got nothing", http.StatusBadRequest)
		return
	}
	scheme := "http"
	if r.cfg.TLS != nil {
		scheme = "https"
	}
	var errs []error
	n := len(r.cfg.Upstreams)
	for i := range n {
		k := (int(r.first.Load()) + i) % n
		addr := r.cfg.Upstreams[k]
		// Each attempt gets a pipe of its own: the transport may still be
		// reading a refused attempt's body, and must not take the
		// worker's next lines. They flow once the stream is accepted.
		pr, pw := io.Pipe()
		go func() { _, _ = pw.Write(hello) }()
		up, err := http.NewRequestWithContext(req.Context(), http.MethodPost, scheme+"://"+addr+Path, pr)
		if err != nil {
			pw.CloseWithError(err)
			errs = append(errs, err)
			continue
		}
		up.Header.Set("Authorization", req.Header.Get("Authorization"))
		up.Header.Set("Content-Type", req.Header.Get("Content-Type"))
		resp, err := r.hc.Do(up)
		if err != nil {
			pw.CloseWithError(err)
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable && i < n-1 {
			pw.CloseWithError(errStandby)
			resp.Body.Close() // a standby: the leader is elsewhere
			errs = append(errs, fmt.Errorf("%s: standing by", addr))
			continue
		}
		r.first.Store(int64(k))
		go func() { _, err := io.Copy(pw, body); pw.CloseWithError(err) }()
		r.pipe(w, resp)
		pw.CloseWithError(io.EOF)
		return
	}
	r.log.Warn("no dispatcher took a worker's stream", "addr", req.RemoteAddr, "err", errors.Join(errs...))
	http.Error(w, fmt.Sprintf("relay %s reaches no dispatcher: %v", r.cfg.Name, errors.Join(errs...)), http.StatusBadGateway)
}

// pipe copies the dispatcher's answer down to the worker as it comes.
func (r *Relay) pipe(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
