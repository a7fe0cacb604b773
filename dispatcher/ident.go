package dispatcher

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrBadIdentifier is wrapped by every identifier validation error.
var ErrBadIdentifier = errors.New("not a valid SQL identifier")

// ValidateIdentifier accepts names PostgreSQL takes without surprises: a
// letter or underscore, then letters, digits, underscores or dollars, at most
// 63 bytes. Names are quoted anyway; validation keeps config typos loud.
func ValidateIdentifier(name string) error {
	if name == "" {
		return fmt.Errorf("empty name: %w", ErrBadIdentifier)
	}
	if len(name) > 63 {
		return fmt.Errorf("%q is longer than 63 bytes: %w", name, ErrBadIdentifier)
	}
	for i, r := range name {
		ok := r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') ||
			(i > 0 && (r == '$' || (r >= '0' && r <= '9')))
		if !ok {
			return fmt.Errorf("%q: use letters, digits and underscores, starting with a letter: %w", name, ErrBadIdentifier)
		}
	}
	return nil
}

// ValidateTable checks a "table" or "schema.table" name.
func ValidateTable(table string) error { return validateTable(table) }

func validateTable(table string) error {
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return fmt.Errorf("%q: use table or schema.table: %w", table, ErrBadIdentifier)
	}
	for _, p := range parts {
		if err := ValidateIdentifier(p); err != nil {
			return err
		}
	}
	return nil
}

// quote returns name as a quoted SQL identifier.
func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteTable quotes an optionally schema-qualified table name.
func quoteTable(table string) string { return pgx.Identifier(strings.Split(table, ".")).Sanitize() }

// quoteLiteral makes a SQL string literal of s, an escape string (E'...')
// so that it reads the same whatever standard_conforming_strings a
// start_sql sets.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(s) + "'"
}
