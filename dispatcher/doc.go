// Package dispatcher is the SQL heart of Pampa: it sets up a database for
// Pampa, reserves rows of the user's own tables for workers, relaunches failed
// and late rows, takes rows back from dead workers, assigns workers to jobs
// elastically, and reports progress.
//
// # Task lifecycle
//
// A task is a row of a job's table; its state lives in the job's bookkeeping
// columns (field_id, field_time, field_times, field_start_time,
// field_end_time, field_success, field_error_description):
//
//	available ──reserve──▶ queued ──start──▶ running ──end──▶ completed
//	    ▲                    │                  │  └──fail──▶ failed
//	    │                    │                  │               │
//	    └──release (worker unassigned, dead or stopping; no attempt spent)
//	    └──relaunch (failed or late, while field_times < max_try_times) ◀┘
//
// The dispatcher reserves (sets field_id and field_time); the worker starts
// (sets field_start_time and adds one to field_times, the attempt counter),
// runs the job's step and ends the row (field_end_time, field_success and
// field_error_description, also on failure so a failed row is relaunched at
// the next cycle instead of waiting for max_job_duration). Lateness is
// measured from field_start_time. A row out of tries stays failed with its
// last error. A worker silent for the heartbeat timeout is dead: its queued
// rows go back at once, its running rows are relaunched (their attempt
// counts).
//
// # Why reservation is safe under concurrency
//
// Every state change is one UPDATE whose WHERE clause re-states the state it
// leaves ("field_id is null and field_end_time is null" to reserve, "field_id
// = me and field_start_time is null" to start). PostgreSQL and CockroachDB
// lock the row and re-check that clause against its newest version before
// writing, so of two concurrent updates of a row only the first matches; the
// default selection also uses FOR UPDATE SKIP LOCKED so that concurrent
// reservations pass over each other's rows instead of queueing. A row is
// therefore never reserved twice, even with two dispatchers; still, a lease
// in pampa_leases makes a second dispatcher stand by. A worker ends a row
// only while the row is still its own, inside the transaction of a sql step,
// so a row taken back meanwhile cannot be completed twice.
//
// # PostgreSQL and CockroachDB
//
// All statements are in the subset both engines run. On PostgreSQL
// (Postgres) workers and dispatcher wake each other with LISTEN/NOTIFY
// and an insert trigger on each job table wakes the dispatcher; on
// CockroachDB (CockroachDB) both poll every delay.
package dispatcher
