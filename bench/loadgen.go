package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pampa-go/pampa/protocol"
)

// loadStep is one run of the load generator: clients simulated workers in
// this process against one dispatcher process.
type loadStep struct {
	Clients, Connected int
	ConnectTime        time.Duration // until every stream was up (or the limit)
	Rows, Total        int64
	Elapsed            time.Duration
	Partial            bool
	Steady             float64 // rows/s between 10% and 90% of the rows
	DispatcherCPU      time.Duration
	HarnessCPU, PGCPU  time.Duration
	DispatcherMem      procMem // after the rows; HWM is the peak
	Note               string
	// Relay: the clients went through a protocol.Relay in the harness,
	// which opened RelayDials connections to the dispatcher.
	Relay      bool
	RelayDials int64
	// DispatcherConns counts the established TCP connections to the
	// dispatcher's port once every stream was up.
	DispatcherConns int
}

func (r loadStep) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Elapsed.Seconds()
}

// simWorker is a simulated worker: a protocol client that reports every
// row it receives as done at once, without a start message.
type simWorker struct {
	c *protocol.Client
}

func newSimWorker(addr string, secret []byte, id int, up *atomic.Int64, log *slog.Logger) (*simWorker, error) {
	inst := make([]byte, 8)
	_, _ = rand.Read(inst)
	host, _ := os.Hostname()
	s := &simWorker{}
	c, err := protocol.NewClient(protocol.ClientConfig{
		Addrs: []string{addr}, Secret: secret, Logger: log,
		Hello: func() protocol.Hello {
			h := protocol.Hello{ID: fmt.Sprintf("local.%d", id), Node: "local", Hostname: host, PID: os.Getpid(),
				Instance: hex.EncodeToString(inst), Jobs: []string{benchJobName}, Slots: 1}
			// Unacknowledged outcomes are rows in hand, as a worker says.
			for _, o := range s.c.Unacked() {
				h.InHand = append(h.InHand, protocol.Held{Ref: o.Ref, Started: true})
			}
			return h
		},
		Deliver: func(m protocol.Message) {
			if m.Kind != protocol.KindRows {
				return
			}
			for _, r := range m.Rows {
				s.c.Report(protocol.Outcome{Ref: r.Ref, OK: true})
			}
		},
		Connected: func(on bool) {
			if on {
				up.Add(1)
			} else {
				up.Add(-1)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	s.c = c
	return s, nil
}

// runLoad connects clients simulated workers (a few hundred at a time) to
// a dispatcher process while the table of rows rows is locked, then lifts
// the lock and times the rows.
func runLoad(ctx context.Context, e *env, b *benchctl, clients, rows int, viaRelay bool, connectLimit time.Duration, log *slog.Logger) (loadStep, error) {
	res := loadStep{Clients: clients, Total: int64(rows), Relay: viaRelay}
	schema := fmt.Sprintf("bench_load_%d", clients)
	if viaRelay {
		schema += "_relay"
	}
	run, err := startChildRun(ctx, e, b, schema, rows, clients, true)
	if err != nil {
		return res, err
	}
	defer run.close()
	cc, conn, lock, d := run.cc, run.conn, run.lock, run.d

	cctx, stopClients := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer func() { stopClients(); wg.Wait() }()
	var up atomic.Int64
	dial := cc.addr
	var relay *protocol.Relay
	if viaRelay {
		r, addr, stop, err := startRelay(cc.addr, cc.secret, log)
		if err != nil {
			return res, err
		}
		defer stop()
		relay, dial = r, addr
	}
	began := time.Now()
	const wave = 250
	for i := 1; i <= clients; i++ {
		s, err := newSimWorker(dial, cc.secret, i, &up, log)
		if err != nil {
			return res, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.c.Run(cctx); err != nil {
				log.Warn("simulated worker refused", "err", err)
			}
		}()
		if i%wave == 0 {
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return res, err
			}
		}
	}
	err = d.waitStreams(ctx, clients, connectLimit, nil)
	res.ConnectTime = time.Since(began)
	res.Connected = int(d.connected.Load())
	if err != nil && ctx.Err() != nil {
		return res, err
	}
	if err != nil {
		res.Note = fmt.Sprintf("%d of %d streams up after %s; ", res.Connected, clients, connectLimit.Round(time.Second))
	}
	if res.Connected == 0 {
		return res, errors.New("no stream came up")
	}
	if _, port, err := net.SplitHostPort(cc.addr); err == nil {
		res.DispatcherConns = establishedTo(port)
	}
	if relay != nil {
		res.RelayDials = relay.Dials()
	}

	cpu0 := readCPU()
	w, err := e.drain(ctx, d, lock, conn, rows)
	res.Rows, res.Elapsed, res.DispatcherCPU = w.rows, w.elapsed, w.dispatcherCPU
	samples := w.samples
	cpu := readCPU().since(cpu0)
	res.HarnessCPU, res.PGCPU = cpu.self, cpu.pg
	res.DispatcherMem, _ = readProcMem(d.pid())
	res.Steady = steadyRate(samples, int64(rows))
	d.heapProfile(b)
	if err := e.printPGStats(ctx, fmt.Sprintf("load generator, %d clients", clients)); err != nil {
		return res, err
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		res.Partial = true
		res.Rows, _ = rowsDone(ctx, conn)
		res.Note += fmt.Sprintf("timed out after %s with %d of %d rows ended", e.timeout, res.Rows, rows)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("wait for the rows to end: %w", err)
	}
	return res, nil
}

// startRelay serves a protocol.Relay to upstream on a free loopback port.
func startRelay(upstream string, secret []byte, log *slog.Logger) (*protocol.Relay, string, func(), error) {
	relay, err := protocol.NewRelay(protocol.RelayConfig{Name: "bench", Upstreams: []string{upstream}, Secret: secret, Logger: log})
	if err != nil {
		return nil, "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = protocol.Serve(ctx, ln, relay, nil, log) }()
	return relay, ln.Addr().String(), func() { cancel(); <-done; relay.Close() }, nil
}

// establishedTo counts this host's established TCP connections whose
// local port is port (the server's side), from /proc/net/tcp and tcp6.
func establishedTo(port string) int {
	p, err := strconv.Atoi(port)
	if err != nil {
		return 0
	}
	want := fmt.Sprintf(":%04X", p)
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "01" {
				n++
			}
		}
	}
	return n
}
