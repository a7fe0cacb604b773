package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/console"
	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/orchestrator"
)

// site is a console over a table of rows in several states.
type site struct {
	t    *testing.T
	pool *pgxpool.Pool
	cfg  *orchestrator.Config
	con  *console.Console
	srv  *httptest.Server
}

func newSite(t *testing.T, edit func(*console.Config)) *site {
	t.Helper()
	pool, url := pgtest.Pool(t)
	ctx := context.Background()
	cfg, err := orchestrator.Parse("cluster.toml", []byte(fmt.Sprintf(`[database]
url = %q
[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 2
[[jobs]]
name = "scrape"
table = "pages"
command = ["true"]
max_try_times = 1
`, url)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `create table pages (id bigint primary key, url text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `insert into pages select g, 'https://example.org/' || g from generate_series(1, 40) g`); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Setup(ctx, pool, dispatcher.Postgres, cfg.Jobs); err != nil {
		t.Fatal(err)
	}
	// 10 completed over the last minutes, 5 failed for good, 25 pending.
	if _, err := pool.Exec(ctx, `update pages set scrape_reservation_id = 'local.1', scrape_reservation_times = 1,
  scrape_start_time = now() - (id || ' minutes')::interval, scrape_end_time = now() - (id || ' minutes')::interval,
  scrape_success = id <= 10, scrape_error_description = case when id > 10 then 'HTTP 500 from example.org' end
where id <= 15`); err != nil {
		t.Fatal(err)
	}
	ccfg := console.Config{Cluster: cfg, DB: pool}
	if edit != nil {
		edit(&ccfg)
	}
	con, err := console.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &site{t: t, pool: pool, cfg: cfg, con: con}
	s.srv = httptest.NewServer(con.Handler())
	t.Cleanup(s.srv.Close)
	return s
}

func (s *site) report() []dispatcher.JobStatus {
	s.t.Helper()
	st, err := dispatcher.Report(context.Background(), s.pool, s.cfg.Jobs)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

func (s *site) count(sql string) int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// browser is a headless Debian chromium driven by chromedp.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatal("no chromium here: install Debian's chromium (.ci/run does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1400, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelC := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelC(); cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// TestConsoleInChromium: the jobs page shows the counts of jobs status
// --json, /api/jobs is that JSON, the pause button pauses the job in the
// database, the rows page retries the failed rows it lists, and a POST
// from another origin is refused.
func TestConsoleInChromium(t *testing.T) {
	t.Parallel()
	s := newSite(t, nil)
	ctx := browser(t)

	// /api/jobs is exactly the JSON of jobs status --json.
	resp, err := http.Get(s.srv.URL + "/api/jobs")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want, _ := json.MarshalIndent(s.report(), "", "  ")
	if strings.TrimSpace(string(body)) != string(want) {
		t.Fatalf("/api/jobs:\n%s\nwant jobs status --json:\n%s", body, want)
	}

	cell := func(f string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#jobs tr[data-job="scrape"] [data-field="`+f+`"]`)))
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		return strings.TrimSpace(v)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#jobs tr[data-job="scrape"]`))); err != nil {
		t.Fatal(err)
	}
	cells := map[string]string{}
	for _, f := range []string{"total", "pending", "retrying", "scheduled", "queued", "running", "completed", "failed", "state"} {
		cells[f] = cell(f)
	}
	st := s.report()[0]
	for f, n := range map[string]int64{"total": st.Total, "pending": st.Pending, "retrying": st.Retrying, "scheduled": st.Scheduled, "queued": st.Queued,
		"running": st.Running, "completed": st.Completed, "failed": st.Failed} {
		if cells[f] != strconv.FormatInt(n, 10) {
			t.Errorf("jobs page: %s = %q; jobs status says %d", f, cells[f], n)
		}
	}
	if st.Completed != 10 || st.Failed != 5 || cells["state"] != "active" {
		t.Fatalf("unexpected start: %+v, state %q", st, cells["state"])
	}
	screenshot(t, ctx, "console-jobs.png")

	// Pause, by its button: the database says so, and the page follows.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`button[data-action="pause"][data-job="scrape"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector('#jobs tr[data-job="scrape"] [data-field="state"]').textContent === "paused"`,
			chromedp.WithPollingTimeout(15*time.Second)),
	); err != nil {
		t.Fatalf("pause from the jobs page: %v", err)
	}
	if n := s.count(`select count(*) from pampa_jobs where name = 'scrape' and paused and changed_by like 'console %'`); n != 1 {
		t.Fatal("the pause button did not pause the job in the database")
	}

	// Rows: the failed ones, listed with their error, retried by selection.
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/rows?job=scrape&state=failed"), chromedp.WaitVisible(chromedp.CSS(`#rows`))); err != nil {
		t.Fatal(err)
	}
	listed, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#rows tbody tr[data-key]').length`))
	if err != nil {
		t.Fatal(err)
	}
	if listed != 5 {
		t.Fatalf("rows page lists %d failed rows; want 5", listed)
	}
	screenshot(t, ctx, "console-rows.png")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#all`)),
		chromedp.Click(chromedp.CSS(`button[data-rows="retry"][data-scope="selected"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#notice`)),
	); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the retried rows to be pending", 10*time.Second, func() string {
		if n := s.count(`select count(*) from pages where scrape_end_time is not null and not scrape_success`); n != 0 {
			return fmt.Sprintf("%d rows still failed", n)
		}
		return ""
	})

	// Every other page renders.
	for path, h1 := range map[string]string{"/workers": "Workers", "/nodes": "Nodes", "/logs": "Logs"} {
		if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+path), chromedp.WaitVisible(chromedp.CSS(`h1`))); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		got, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`h1`)))
		if err != nil || strings.TrimSpace(got) != h1 {
			t.Errorf("%s shows %q (%v); want %q", path, got, err, h1)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/workers"), chromedp.WaitVisible(chromedp.CSS(`section.node[data-node="local"]`))); err != nil {
		t.Fatalf("the workers page has no section for node local: %v", err)
	}

	// Another origin's page posts to the console: refused, nothing changes.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `<!doctype html><script>
fetch(%q, {method: "POST", mode: "no-cors", body: "{}"}).then(() => document.title = "sent", () => document.title = "sent");
</script>`, s.srv.URL+"/api/jobs/scrape/resume")
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1) // another origin for the browser
	if err := chromedp.Do(ctx, chromedp.Navigate(evilURL),
		chromedp.Poll[chromedp.Void](`document.title === "sent"`, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the request has been answered by now; its effect would be written
	if n := s.count(`select count(*) from pampa_jobs where name = 'scrape' and paused`); n != 1 {
		t.Fatal("a cross-origin POST resumed the job")
	}
	req, _ := http.NewRequest(http.MethodPost, s.srv.URL+"/api/jobs/scrape/resume", strings.NewReader("{}"))
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin POST: %v %v; want 403", resp.Status, err)
	}
}

// screenshot saves the page for the README when PAMPA_SCREENSHOTS names a
// directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("PAMPA_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Ten viewers polling the jobs API cost one report query per second.
func TestReportSharedByViewers(t *testing.T) {
	t.Parallel()
	s := newSite(t, nil)
	before := s.con.Reads()
	began := time.Now()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(began) < 3*time.Second {
				resp, err := http.Get(s.srv.URL + "/api/jobs")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	if n := s.con.Reads() - before; n > int(elapsed/time.Second)+1 {
		t.Fatalf("%d report queries in %s for 10 viewers; want at most one per second", n, elapsed.Round(time.Millisecond))
	}
}

// Read-only hides and refuses actions; a token guards a console off
// loopback; a base path prefixes every link.
func TestConsoleProtections(t *testing.T) {
	t.Parallel()
	ro := newSite(t, func(c *console.Config) { c.ReadOnly = true })
	resp, _ := http.Post(ro.srv.URL+"/api/jobs/scrape/pause", "application/json", strings.NewReader("{}"))
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("read-only pause: %s; want 403", resp.Status)
	}
	page := get(t, ro.srv.URL+"/")
	if strings.Contains(page, `data-action="pause"`) {
		t.Error("a read-only console shows the pause button")
	}

	tok := newSite(t, func(c *console.Config) { c.Token = "t0ken" })
	if resp, _ := http.Get(tok.srv.URL + "/"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %s; want 401", resp.Status)
	}
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	if resp, err := client.Get(tok.srv.URL + "/?token=t0ken"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("with the token: %v %v", resp, err)
	}
	if resp, err := client.Get(tok.srv.URL + "/rows"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("with the cookie the token set: %v %v", resp.Status, err)
	}

	bp := newSite(t, func(c *console.Config) { c.BasePath = "/pampa" })
	page = get(t, bp.srv.URL+"/pampa/")
	if !strings.Contains(page, `href="/pampa/rows"`) || !strings.Contains(page, `/pampa/static/app.js`) {
		t.Errorf("links under the base path missing:\n%s", page)
	}
	if body := get(t, bp.srv.URL+"/pampa/static/app.js"); !strings.Contains(body, "EventSource") {
		t.Error("static files are not served under the base path")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

// TestLogsAndWorkerActionsInChromium: the logs page follows a worker's log
// live (a line written after the page opened shows up), and the workers
// page's buttons start and stop the workers of a node.
func TestLogsAndWorkerActionsInChromium(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	// A stand-in for pampactl: `workers start` finds it by its --id in
	// its command line, as it finds a worker.
	fake := filepath.Join(t.TempDir(), "fakeworker")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\ntrap 'kill $!; exit' TERM\nsleep 60 &\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var fleet *orchestrator.Fleet
	s := newSite(t, func(c *console.Config) {
		c.Cluster.Nodes[0].WorkDir = work
		fleet = &orchestrator.Fleet{Config: c.Cluster, Binary: fake}
		c.Fleet, c.ProcessTimeout = fleet, 5*time.Second
	})
	t.Cleanup(func() { _, _ = fleet.StopWorkers(context.Background(), nil) })
	logFile := filepath.Join(work, orchestrator.WorkerLogFile("local.1"))
	appendLine := func(line string) {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintln(f, line)
	}
	appendLine("fetched https://example.org/1")
	ctx := browser(t)
	logText := func(want string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.getElementById("log").textContent.includes(%q)`, want),
			chromedp.WithPollingTimeout(20*time.Second))
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/logs?worker=local.1"), logText("local.1: fetched https://example.org/1")); err != nil {
		t.Fatalf("the logs page does not show the worker's log: %v", err)
	}
	appendLine("fetched https://example.org/2")
	if err := chromedp.Do(ctx, logText("local.1: fetched https://example.org/2")); err != nil {
		t.Fatalf("a line written after the page opened did not show up: %v", err)
	}

	running := func(want bool) string {
		res, err := fleet.WorkerProcesses(context.Background(), nil)
		if err != nil {
			return err.Error()
		}
		for _, n := range res {
			for _, w := range n.Workers {
				if (w.State == "running") != want {
					return fmt.Sprintf("%s is %s", w.ID, w.State)
				}
			}
		}
		return ""
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/workers"),
		chromedp.Click(chromedp.CSS(`button[data-node-op="start"][data-node="local"]`))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the start button to start the node's workers", 20*time.Second, func() string { return running(true) })
	if err := chromedp.Do(ctx, chromedp.Navigate(s.srv.URL+"/workers"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-worker="local.2"]`))); err != nil {
		t.Fatalf("the workers page does not list the running workers: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[data-node-op="stop"][data-node="local"]`))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the stop button to stop them", 20*time.Second, func() string { return running(false) })
}
