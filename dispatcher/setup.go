package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Flavor is the database engine. PostgreSQL gets LISTEN/NOTIFY and an insert
// trigger that wakes the dispatcher; CockroachDB polls every delay.
type Flavor string

const (
	Postgres    Flavor = "postgres"
	CockroachDB Flavor = "crdb"
)

// SchemaVersion is the version of Pampa's own tables written by Setup.
const SchemaVersion = 2

// ErrNotSetUp is returned by Check when a job's table lacks Pampa's columns
// or Pampa's own tables are missing: run `pampactl db setup`.
var ErrNotSetUp = errors.New("database not set up for Pampa")

// ErrNoTable means a job names a table the database does not have.
var ErrNoTable = errors.New("no such table")

// ownTables are Pampa's tables, created in the connection's current schema.
var ownTables = []string{
	`create table if not exists pampa_schema_version (
  version int primary key,
  applied_at timestamptz not null default now())`,
	`create table if not exists pampa_workers (
  id text primary key,
  node text not null default '',
  hostname text not null default '',
  pid int not null default 0,
  state text not null default 'alive',
  job text,
  assigned_at timestamptz,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  stopped_at timestamptz,
  rows_done bigint not null default 0,
  rows_failed bigint not null default 0)`,
	`create table if not exists pampa_leases (
  name text primary key,
  holder text not null,
  expires_at timestamptz not null)`,
	// Version 2: jobs paused by operators.
	`create table if not exists pampa_jobs (
  name text primary key,
  paused boolean not null default false,
  changed_at timestamptz not null default now(),
  changed_by text not null default '')`,
	`insert into pampa_schema_version (version) values (1), (2) on conflict do nothing`,
}

// Setup creates Pampa's tables and, for each job, the bookkeeping columns
// missing on its table and the partial indexes that keep selection fast. It
// is idempotent and never drops or rewrites user data.
func Setup(ctx context.Context, db DB, flavor Flavor, jobs []Job) error {
	// Every table and named column must fit before anything is written.
	var errs []error
	for _, j := range jobs {
		if err := checkColumns(ctx, db, j); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, s := range ownTables {
		if _, err := db.Exec(ctx, s); err != nil {
			return fmt.Errorf("create Pampa's tables: %w", err)
		}
	}
	for _, j := range jobs {
		if err := setupJob(ctx, db, flavor, j); err != nil {
			return fmt.Errorf("set up job %q on table %s: %w", j.Name, j.Table, err)
		}
	}
	return nil
}

func setupJob(ctx context.Context, db DB, flavor Flavor, j Job) error {
	if _, err := tableColumns(ctx, db, j.Table); err != nil {
		return err
	}
	f, t := j.Fields, quoteTable(j.Table)
	stmts := []string{}
	for _, c := range []struct{ name, typ string }{
		{f.ID, "text"}, {f.Time, "timestamptz"}, {f.Times, "int"},
		{f.StartTime, "timestamptz"}, {f.EndTime, "timestamptz"},
		{f.Success, "boolean"}, {f.ErrorDescription, "text"}, {f.Final, "boolean"},
		{f.RunAt, "timestamptz"},
	} {
		if c.name != "" {
			stmts = append(stmts, fmt.Sprintf("alter table %s add column if not exists %s %s", t, quote(c.name), c.typ))
		}
	}
	pk, id, st, en, ok, ts := quote(f.PrimaryKey), quote(f.ID), quote(f.StartTime), quote(f.EndTime), quote(f.Success), quote(f.Times)
	indexes := []struct{ suffix, cols, where string }{
		{"available", pk, fmt.Sprintf("%s is null and %s is null", id, en)},
		{"queued", id + ", " + pk, fmt.Sprintf("%s is not null and %s is null", id, st)},
		{"running", id, fmt.Sprintf("%s is not null and %s is null", st, en)},
		{"failed", ts, fmt.Sprintf("%s is not null and %s = false", en, ok)},
		{"cancelling", id, fmt.Sprintf("%s and %s is null", quote(f.Final), en)},
	}
	if f.RunAt != "" {
		indexes = append(indexes, struct{ suffix, cols, where string }{"scheduled", quote(f.RunAt),
			fmt.Sprintf("%s is null and %s is null and %s is not null", id, en, quote(f.RunAt))})
	}
	if j.Limits.MaxPerMinute > 0 {
		indexes = append(indexes, struct{ suffix, cols, where string }{"reserved", quote(f.Time), quote(f.Time) + " is not null"})
	}
	if j.RepeatEvery > 0 {
		indexes = append(indexes, struct{ suffix, cols, where string }{"completed", en, fmt.Sprintf("%s is not null and %s", en, ok)})
	}
	for _, ix := range indexes {
		stmts = append(stmts, fmt.Sprintf("create index if not exists %s on %s (%s) where %s",
			quote(indexName(j, ix.suffix)), t, ix.cols, ix.where))
	}
	if flavor != CockroachDB {
		ns, err := Namespace(ctx, db)
		if err != nil {
			return err
		}
		stmts = append(stmts, notifyFunction(DispatcherChannel(ns)),
			fmt.Sprintf("drop trigger if exists %s on %s", quote(indexName(j, "notify")), t),
			fmt.Sprintf("create trigger %s after insert on %s for each statement execute function pampa_notify_insert()",
				quote(indexName(j, "notify")), t))
	}
	for _, s := range stmts {
		if _, err := db.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", firstLine(s), err)
		}
	}
	return nil
}

// ErrBadColumn means a field_* key names a column that cannot hold what
// Pampa writes there: the wrong type, NOT NULL, or missing (the key).
var ErrBadColumn = errors.New("a bookkeeping column does not fit")

// columnKinds are the types each bookkeeping column may have, by the
// names information_schema gives them.
var columnKinds = map[string][]string{
	"text":        {"text", "character varying"},
	"timestamptz": {"timestamp with time zone"},
	"int":         {"integer", "bigint", "smallint"},
	"boolean":     {"boolean"},
}

// checkColumns verifies, writing nothing, that the job's table exists,
// that its primary key is a column, and that every bookkeeping column
// that exists already has a type Pampa can write and takes null: such a
// column is most likely a user's (field_error_description = "url" would
// overwrite the URLs).
func checkColumns(ctx context.Context, db DB, j Job) error {
	schema, name := splitTable(j.Table)
	rows, err := db.Query(ctx, `select column_name, data_type, is_nullable = 'YES' from information_schema.columns
where table_schema = coalesce(nullif($1, ''), current_schema()) and table_name = $2`, schema, name)
	if err != nil {
		return fmt.Errorf("job %q: read columns of table %s: %w", j.Name, j.Table, err)
	}
	type col struct {
		typ      string
		nullable bool
	}
	cols := map[string]col{}
	for rows.Next() {
		var n string
		var c col
		if err := rows.Scan(&n, &c.typ, &c.nullable); err != nil {
			return err
		}
		cols[n] = c
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("job %q: read columns of table %s: %w", j.Name, j.Table, err)
	}
	if len(cols) == 0 {
		return fmt.Errorf("job %q: %w: %s is not in the database (check the job's table key and the connection's search_path)", j.Name, ErrNoTable, j.Table)
	}
	var errs []error
	if _, ok := cols[j.Fields.PrimaryKey]; !ok {
		errs = append(errs, fmt.Errorf("%w: job %q: field_primary_key = %q is not a column of table %s; set it to the table's primary key",
			ErrBadColumn, j.Name, j.Fields.PrimaryKey, j.Table))
	}
	f := j.Fields
	for _, c := range []struct{ key, name, kind string }{
		{"field_id", f.ID, "text"}, {"field_time", f.Time, "timestamptz"}, {"field_times", f.Times, "int"},
		{"field_start_time", f.StartTime, "timestamptz"}, {"field_end_time", f.EndTime, "timestamptz"},
		{"field_success", f.Success, "boolean"}, {"field_error_description", f.ErrorDescription, "text"},
		{"field_final", f.Final, "boolean"}, {"field_run_at", f.RunAt, "timestamptz"},
	} {
		have, ok := cols[c.name]
		if c.name == "" || !ok {
			continue // db setup adds it
		}
		switch {
		case !slices.Contains(columnKinds[c.kind], have.typ):
			errs = append(errs, fmt.Errorf("%w: job %q: %s = %q is a column of type %s; Pampa writes %s there: name another column (db setup adds it)",
				ErrBadColumn, j.Name, c.key, c.name, have.typ, c.kind))
		case !have.nullable:
			errs = append(errs, fmt.Errorf("%w: job %q: %s = %q is NOT NULL; Pampa writes null to it, so it is likely your own data: name another column",
				ErrBadColumn, j.Name, c.key, c.name))
		}
	}
	return errors.Join(errs...)
}

// notifyFunction wakes the dispatcher when rows are inserted, so new rows
// start within milliseconds instead of waiting out the poll delay.
// The channel is baked in: the inserting session may have another search_path.
func notifyFunction(channel string) string {
	return `create or replace function pampa_notify_insert() returns trigger language plpgsql as $$
begin
  perform pg_notify('` + channel + `', 'insert');
  return null;
end $$`
}

// indexName names a job's index or trigger; long job names are shortened
// with a hash so the name stays under 63 bytes and unique.
func indexName(j Job, suffix string) string {
	name := "pampa_" + j.Name + "_" + suffix
	if len(name) <= 63 {
		return name
	}
	return channelName(suffix, j.Table, j.Name)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// tableColumns returns the column names and types of a table, or an error
// naming the table when it does not exist.
func tableColumns(ctx context.Context, db DB, table string) (map[string]string, error) {
	schema, name, found := strings.Cut(table, ".")
	if !found {
		schema, name = "", table
	}
	rows, err := db.Query(ctx, `select column_name, data_type from information_schema.columns
where table_schema = coalesce(nullif($1, ''), current_schema()) and table_name = $2`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("read columns of table %s: %w", table, err)
	}
	cols := map[string]string{}
	for rows.Next() {
		var c, typ string
		if err := rows.Scan(&c, &typ); err != nil {
			return nil, err
		}
		cols[c] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of table %s: %w", table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: %s is not in the database (check the job's table key and the connection's search_path)", ErrNoTable, table)
	}
	return cols, nil
}

// Check verifies, before anything is written, that Pampa's tables exist and
// that every job's table has its primary key and bookkeeping columns.
func Check(ctx context.Context, db DB, jobs []Job) error {
	var version int
	err := db.QueryRow(ctx, `select coalesce(max(version), 0) from pampa_schema_version`).Scan(&version)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42P01", err == nil && version < SchemaVersion: // undefined_table
		return fmt.Errorf("%w: Pampa's tables are missing or old; run: pampactl db setup", ErrNotSetUp)
	case err != nil:
		// Not a verdict on the schema: an unreachable database is worth
		// waiting for, a missing table is not.
		return fmt.Errorf("read Pampa's schema version: %w", err)
	}
	var errs []error
	for _, j := range jobs {
		cols, err := tableColumns(ctx, db, j.Table)
		if err != nil {
			errs = append(errs, fmt.Errorf("job %q: %w", j.Name, err))
			continue
		}
		var missing []string
		for _, c := range j.columns() {
			if _, ok := cols[c.name]; ok {
				continue
			}
			if c.key == "field_primary_key" {
				errs = append(errs, fmt.Errorf("%w: job %q: field_primary_key = %q is not a column of table %s; set it to a column of the table",
					ErrNotSetUp, j.Name, c.name, j.Table))
				continue
			}
			missing = append(missing, fmt.Sprintf("%s = %q", c.key, c.name))
		}
		if len(missing) > 0 {
			// One hint per job, however many columns it lacks.
			errs = append(errs, fmt.Errorf("%w: job %q: table %s lacks its bookkeeping columns (%s); run: pampactl db setup",
				ErrNotSetUp, j.Name, j.Table, strings.Join(missing, ", ")))
		}
		if typ, ok := cols[j.Fields.ID]; ok && typ != "text" && typ != "character varying" {
			errs = append(errs, fmt.Errorf("%w: job %q: column %s is %s; worker ids like node1.3 need text or varchar",
				ErrNotSetUp, j.Name, j.Fields.ID, typ))
		}
	}
	return errors.Join(errs...)
}

// Namespace is the schema Pampa's tables live in; it scopes notification
// channels so that tenants of one database do not wake each other.
func Namespace(ctx context.Context, db DB) (string, error) {
	var ns string
	if err := db.QueryRow(ctx, `select current_schema()`).Scan(&ns); err != nil {
		return "", fmt.Errorf("read current schema: %w", err)
	}
	return ns, nil
}

var _ DB = (*pgx.Conn)(nil)

// KeyType returns the SQL type of the job's primary key, as statements cast
// keys from text: the type's own name (int8, uuid, varchar), so that no
// length or precision of a declared type can truncate a key.
func KeyType(ctx context.Context, db DB, j Job) (string, error) {
	schema, name := splitTable(j.Table)
	var dataType, udtSchema, udtName string
	err := db.QueryRow(ctx, `select data_type, udt_schema, udt_name from information_schema.columns
where table_schema = coalesce(nullif($1, ''), current_schema()) and table_name = $2 and column_name = $3`,
		schema, name, j.Fields.PrimaryKey).Scan(&dataType, &udtSchema, &udtName)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("job %q: field_primary_key = %q is not a column of table %s", j.Name, j.Fields.PrimaryKey, j.Table)
	}
	if err != nil {
		return "", fmt.Errorf("job %q: read the primary key's type: %w", j.Name, err)
	}
	if dataType == "USER-DEFINED" {
		return quote(udtSchema) + "." + quote(udtName), nil
	}
	return quote(udtName), nil
}

// UserColumns returns the columns of the job's table that workers receive:
// all but Pampa's bookkeeping, in the table's order.
// CockroachDB's hidden columns (a hash-sharded index's, crdb_region) are
// left out, as to_jsonb(t) leaves them.
func UserColumns(ctx context.Context, db DB, flavor Flavor, j Job) ([]string, error) {
	schema, name := splitTable(j.Table)
	hidden := ""
	if flavor == CockroachDB {
		hidden = " and is_hidden = 'NO'"
	}
	rows, err := db.Query(ctx, `select column_name from information_schema.columns
where table_schema = coalesce(nullif($1, ''), current_schema()) and table_name = $2`+hidden+`
order by ordinal_position`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("job %q: read the columns of table %s: %w", j.Name, j.Table, err)
	}
	pampa := j.Fields.bookkeeping()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("job %q: read the columns of table %s: %w", j.Name, j.Table, err)
		}
		if !slices.Contains(pampa, c) {
			cols = append(cols, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("job %q: read the columns of table %s: %w", j.Name, j.Table, err)
	}
	return cols, nil
}

// splitTable parts an optionally schema-qualified table name; the schema
// is "" when not given (information_schema queries take current_schema()).
func splitTable(table string) (schema, name string) {
	if schema, name, found := strings.Cut(table, "."); found {
		return schema, name
	}
	return "", table
}
