// Package console is the operator's web console: jobs, rows, workers, nodes
// and logs on server-rendered pages, with the actions of the CLI (pause and
// resume, retry and cancel rows, start and stop a node's workers) behind
// an HTTP API that scripts can use too. The pages are html/template with a
// little embedded JavaScript that polls the same API: go build needs no
// Node tool chain, and the charts are SVG drawn by the templates.
package console

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

//go:embed templates/*.html static/*
var files embed.FS

// Config configures a console.
type Config struct {
	Cluster *orchestrator.Config
	DB      *pgxpool.Pool
	// Fleet reaches the nodes over SSH (logs, worker processes and
	// actions); Check is nodes check. nil leaves those out.
	Fleet *orchestrator.Fleet
	Check func(context.Context) ([]orchestrator.NodeCheck, error)
	// ProcessTimeout bounds asking the nodes for their workers' processes
	// on the workers page; 0 does not ask.
	ProcessTimeout time.Duration
	// ReadOnly hides and refuses every action.
	ReadOnly bool
	// BasePath is where a reverse proxy mounts the console ("/pampa");
	// "" for the root.
	BasePath string
	// Token, if set, must come as "Authorization: Bearer TOKEN", a
	// token=TOKEN query (which sets a cookie), or the cookie. User and
	// Password, if set, are basic auth. Neither: no authentication (the
	// caller keeps such a console on loopback).
	Token          string
	User, Password string
	Logger         *slog.Logger
	// ReportEvery bounds how often the jobs' counts are read, however many
	// viewers poll; default 1s.
	ReportEvery time.Duration
	// Decisions, if set, are the assignment decisions of the dispatcher
	// beside the console (dispatcher run, up).
	Decisions func() []dispatcher.Decision
	// Metrics, if set, is served at /metrics (behind the console's
	// authentication).
	Metrics http.Handler
}

// Console serves the pages and the API.
type Console struct {
	cfg   Config
	log   *slog.Logger
	pages *template.Template
	mux   *http.ServeMux

	mu        sync.Mutex
	reportAt  time.Time
	report    []dispatcher.JobStatus
	reportErr error
	reads     int // report queries made, for tests
	charts    map[string]chart
	// rows done per worker at the last workers page, for rows/s
	lastDone   map[string]int64
	lastDoneAt time.Time
}

// New builds a console.
func New(cfg Config) (*Console, error) {
	if cfg.Cluster == nil || cfg.DB == nil {
		return nil, errors.New("console: a config and a database are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReportEvery <= 0 {
		cfg.ReportEvery = time.Second
	}
	cfg.BasePath = strings.TrimSuffix(cfg.BasePath, "/")
	if cfg.BasePath != "" && !strings.HasPrefix(cfg.BasePath, "/") {
		return nil, fmt.Errorf("console: base path %q must start with /", cfg.BasePath)
	}
	c := &Console{cfg: cfg, log: cfg.Logger.With("who", "console"), charts: map[string]chart{}}
	funcs := template.FuncMap{
		"base":    func() string { return cfg.BasePath },
		"percent": percent,
		"stamp": func(t *time.Time) string {
			if t == nil {
				return ""
			}
			return t.Local().Format("2006-01-02 15:04:05")
		},
		"deref": func(s *string) string {
			if s == nil {
				return ""
			}
			return *s
		},
	}
	var err error
	if c.pages, err = template.New("").Funcs(funcs).ParseFS(files, "templates/*.html"); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", c.jobsPage)
	m.HandleFunc("GET /rows", c.rowsPage)
	m.HandleFunc("GET /workers", c.workersPage)
	m.HandleFunc("GET /nodes", c.nodesPage)
	m.HandleFunc("GET /logs", c.logsPage)
	m.Handle("GET /static/", http.FileServerFS(files))
	m.HandleFunc("GET /api/jobs", c.apiJobs)
	m.HandleFunc("GET /api/jobs/{job}/rows", c.apiRows)
	m.HandleFunc("GET /api/jobs/{job}/throughput", c.apiThroughput)
	m.HandleFunc("GET /api/workers", c.apiWorkers)
	m.HandleFunc("GET /api/decisions", c.apiDecisions)
	if c.cfg.Metrics != nil {
		m.Handle("GET /metrics", c.cfg.Metrics)
	}
	m.HandleFunc("POST /api/jobs/{job}/pause", c.action(c.pause(true)))
	m.HandleFunc("POST /api/jobs/{job}/resume", c.action(c.pause(false)))
	m.HandleFunc("POST /api/jobs/{job}/rows/retry", c.action(c.rowsAction("retry")))
	m.HandleFunc("POST /api/jobs/{job}/rows/cancel", c.action(c.rowsAction("cancel")))
	m.HandleFunc("POST /api/nodes/{node}/workers/{op}", c.action(c.workersAction))
	c.mux = m
}

// Handler is the console with its protections: authentication, the
// cross-origin check of unsafe requests, and the base path.
func (c *Console) Handler() http.Handler {
	var h http.Handler = c.mux
	h = http.NewCrossOriginProtection().Handler(h)
	h = c.authenticate(h)
	if c.cfg.BasePath != "" {
		h = http.StripPrefix(c.cfg.BasePath, h)
	}
	return h
}

const tokenCookie = "pampa_console_token"

// authenticate checks the token or basic auth, when the console has one.
func (c *Console) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.cfg.Token == "" && c.cfg.User == "" {
			next.ServeHTTP(w, r)
			return
		}
		if c.cfg.User != "" {
			u, p, ok := r.BasicAuth()
			if ok && equal(u, c.cfg.User) && equal(p, c.cfg.Password) {
				next.ServeHTTP(w, r)
				return
			}
		}
		if c.cfg.Token != "" {
			tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if q := r.URL.Query().Get("token"); q != "" {
				tok = q
				if equal(q, c.cfg.Token) {
					http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: q, Path: c.cfg.BasePath + "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
				}
			} else if ck, err := r.Cookie(tokenCookie); err == nil && tok == "" {
				tok = ck.Value
			}
			if equal(tok, c.cfg.Token) {
				next.ServeHTTP(w, r)
				return
			}
		}
		if c.cfg.User != "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="pampa console"`)
		}
		c.log.Warn("refused a console request", "addr", r.RemoteAddr, "path", r.URL.Path)
		http.Error(w, "the console needs its token (printed when it started) or its user and password", http.StatusUnauthorized)
	})
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// who names the operator of a request, for the action log.
func (c *Console) who(r *http.Request) string {
	if u, _, ok := r.BasicAuth(); ok {
		return u + "@" + r.RemoteAddr
	}
	return r.RemoteAddr
}

// action wraps a POST: refused when read-only, logged with who and what.
func (c *Console) action(do func(w http.ResponseWriter, r *http.Request) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.cfg.ReadOnly {
			http.Error(w, "this console is read-only (--read-only)", http.StatusForbidden)
			return
		}
		what, err := do(w, r)
		if err != nil {
			c.log.Warn("console action failed", "who", c.who(r), "what", what, "err", err)
			status := http.StatusInternalServerError
			var ue userError
			if errors.As(err, &ue) {
				status = ue.status
			}
			writeJSON(w, status, map[string]string{"error": err.Error()})
			return
		}
		c.log.Info("console action", "who", c.who(r), "what", what)
	}
}

// userError is a request the console refuses, with its status.
type userError struct {
	status int
	msg    string
}

func (e userError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return userError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// job finds the job of a request's path.
func (c *Console) job(r *http.Request) (dispatcher.Job, error) {
	name := r.PathValue("job")
	if name == "" {
		name = r.URL.Query().Get("job")
	}
	if j, ok := c.cfg.Cluster.Job(name); ok {
		return j, nil
	}
	return dispatcher.Job{}, userError{http.StatusNotFound, fmt.Sprintf("no job %q", name)}
}

// Report returns the jobs' counts, read at most once per ReportEvery
// whatever the number of viewers: exactly what jobs status --json prints.
func (c *Console) Report(ctx context.Context) ([]dispatcher.JobStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.reportAt) < c.cfg.ReportEvery {
		return c.report, c.reportErr
	}
	c.reads++
	c.report, c.reportErr = dispatcher.Report(ctx, c.cfg.DB, c.cfg.Cluster.Jobs)
	c.reportAt = time.Now()
	return c.report, c.reportErr
}

// Reads says how many report queries the console made.
func (c *Console) Reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func percent(part, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return 100 * float64(part) / float64(total)
}

// Listen serves h on addr until ctx ends.
func Listen(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
