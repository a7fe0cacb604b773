// Package pgurl edits PostgreSQL connection strings, in either form pgx
// accepts: a postgres:// URL or keyword/value pairs.
package pgurl

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// WithSearchPath returns conn with search_path set to schema, which pgx
// sends as a runtime parameter, so unqualified names resolve in schema.
func WithSearchPath(conn, schema string) (string, error) {
	if !strings.HasPrefix(conn, "postgres://") && !strings.HasPrefix(conn, "postgresql://") {
		// Keyword/value: a later setting overrides an earlier one.
		return conn + " search_path=" + quote(schema), nil
	}
	u, err := url.Parse(conn)
	if err != nil {
		// url.Error quotes the whole URL, password included: keep only why.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("not a URL: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// quote makes v one value of a keyword/value string.
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
