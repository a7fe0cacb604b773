// The console's pages work without this file; it keeps them live and
// sends the actions to the API the pages share with scripts.
(function () {
  const base = document.body.dataset.base || "";
  const notice = document.getElementById("notice");
  function say(text, bad) {
    notice.hidden = false;
    notice.textContent = text;
    notice.className = bad ? "error" : "notice";
  }
  async function post(path, body) {
    const r = await fetch(base + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || r.status + " " + r.statusText);
    return data;
  }

  // Jobs: counts refreshed from /api/jobs, the JSON of jobs status --json.
  const jobs = document.getElementById("jobs");
  if (jobs) {
    async function refresh() {
      try {
        const r = await fetch(base + "/api/jobs");
        if (!r.ok) return;
        for (const s of await r.json()) {
          const row = jobs.querySelector(`tr[data-job="${CSS.escape(s.job)}"]`);
          if (!row) continue;
          for (const f of ["total", "pending", "scheduled", "queued", "running"]) {
            row.querySelector(`[data-field="${f}"]`).textContent = s[f];
          }
          for (const f of ["retrying", "completed", "failed"]) {
            row.querySelector(`[data-field="${f}"] a`).textContent = s[f];
          }
          row.querySelector('[data-field="state"]').textContent = s.paused ? "paused" : "active";
          const done = s.total ? (100 * (s.completed + s.failed)) / s.total : 0;
          row.querySelector('[data-field="progress"]').style.width = done.toFixed(1) + "%";
          const p = row.querySelector('[data-action="pause"]'), q = row.querySelector('[data-action="resume"]');
          if (p) { p.hidden = s.paused; q.hidden = !s.paused; }
        }
      } catch (e) { /* the next poll tries again */ }
    }
    setInterval(refresh, 2000);
    jobs.addEventListener("click", async (ev) => {
      const b = ev.target.closest("button[data-action]");
      if (!b) return;
      try {
        await post(`/api/jobs/${encodeURIComponent(b.dataset.job)}/${b.dataset.action}`);
        say(`${b.dataset.job}: ${b.dataset.action}d`);
        refresh();
      } catch (e) { say(e.message, true); }
    });
  }

  // Rows: retry or cancel the selection, or everything the filter matches
  // after a dry-run count.
  const actions = document.querySelector(".actions");
  if (actions) {
    const job = actions.dataset.job;
    const all = document.getElementById("all");
    if (all) all.addEventListener("change", () => document.querySelectorAll("input.pick").forEach((c) => (c.checked = all.checked)));
    const confirmBox = document.getElementById("confirm");
    let pending = null;
    actions.addEventListener("click", async (ev) => {
      const b = ev.target.closest("button[data-rows]");
      if (!b) return;
      const op = b.dataset.rows, path = `/api/jobs/${encodeURIComponent(job)}/rows/${op}`;
      try {
        if (b.dataset.scope === "selected") {
          const keys = [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
          if (!keys.length) return say("select rows first", true);
          const res = await post(path, { keys });
          say(`${op}: ${res.done} of ${res.asked} rows`);
          return;
        }
        const filter = { state: actions.dataset.state, key: actions.dataset.key };
        const dry = await post(path, { filter, dry_run: true });
        pending = { path, filter, op };
        document.getElementById("confirm-text").textContent = `${op} ${dry.rows} rows matching this filter?`;
        confirmBox.hidden = false;
      } catch (e) { say(e.message, true); }
    });
    document.getElementById("confirm-yes").addEventListener("click", async () => {
      confirmBox.hidden = true;
      if (!pending) return;
      try {
        const res = await post(pending.path, { filter: pending.filter });
        say(`${pending.op}: ${res.done} of ${res.asked} rows`);
      } catch (e) { say(e.message, true); }
      pending = null;
    });
    document.getElementById("confirm-no").addEventListener("click", () => { confirmBox.hidden = true; pending = null; });
  }

  // Workers: start, stop or restart a node's workers.
  document.querySelectorAll("button[data-node-op]").forEach((b) =>
    b.addEventListener("click", async () => {
      try {
        await post(`/api/nodes/${encodeURIComponent(b.dataset.node)}/workers/${b.dataset.nodeOp}`);
        say(`${b.dataset.node}: ${b.dataset.nodeOp} done`);
      } catch (e) { say(e.message, true); }
    }));

  // Logs: a live tail over server-sent events.
  const log = document.getElementById("log");
  if (log) {
    const es = new EventSource(log.dataset.stream);
    es.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      log.textContent += `${m.worker}: ${m.line}\n`;
      log.scrollTop = log.scrollHeight;
    };
    es.addEventListener("failure", (ev) => say(JSON.parse(ev.data).error, true));
  }
})();
