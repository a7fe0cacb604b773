package pgtest

import (
	"regexp"
	"strings"
	"testing"
)

func TestSchemaName(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	tests := []struct {
		name, test, prefix string
	}{
		{"plain", "TestFoo", "testfoo_"},
		{"subtest", "TestFoo/Bar baz", "testfoo_bar_baz_"},
		{"reserved prefix", "pg_x", "t_pg_x_"},
		{"leading digit", "1st", "t_1st_"},
		{"empty", "", "t__"},
		{"long", "Test" + strings.Repeat("x", 100), "test" + strings.Repeat("x", 50)},
		{"non-ASCII", "TestÜber/ünïcode", "test_ber_n_code_"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := schemaName(tc.test)
			if len(got) > maxIdent || !valid.MatchString(got) || !strings.HasPrefix(got, tc.prefix) {
				t.Errorf("schemaName(%q) = %q, want a valid name of at most %d bytes starting %q",
					tc.test, got, maxIdent, tc.prefix)
			}
			if again := schemaName(tc.test); again == got {
				t.Errorf("schemaName(%q) returned %q twice", tc.test, got)
			}
		})
	}
}
