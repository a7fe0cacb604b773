// Package worker runs on nodes: a Worker takes the rows the dispatcher
// reserved for it, marks each started (one more attempt), runs the job's step
// and marks it ended with its success and error description. A failing row
// never stops the others.
//
// Steps are SQL (one statement per row with the primary key as $1, run for a
// whole chunk of rows in one transaction together with the rows' end marks,
// so the step's effects commit exactly when the rows are marked done), a
// command (argv run per row with the row as JSON on stdin, killed past
// max_job_duration_minutes) or a Go Handler registered by job name.
//
// A worker heart-beats; the dispatcher takes back the rows of a worker that
// stops heart-beating. On stop (context cancelled, SIGTERM in the CLI) it
// takes no new rows, lets the running row finish within the grace period,
// gives back the rows it had reserved and exits cleanly. Database outages are
// retried with backoff.
package worker
