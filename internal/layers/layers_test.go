package layers

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pampa-go/pampa/"

// allowed lists, for each package of the module (by path under the
// module), the module's packages it may import directly. "internal/*"
// stands for any internal helper. A package missing here fails the test:
// a new package states its place when it is added.
var allowed = map[string][]string{
	"protocol":                   {"internal/*"},
	"sshx":                       {"internal/*"},
	"deploy":                     {"internal/*"},
	"dispatcher":                 {"protocol", "internal/*"},
	"worker":                     {"protocol", "internal/*"},
	"orchestrator":               {"deploy", "sshx", "dispatcher", "worker", "internal/*"},
	"cmd/pampactl":               {"cmd/pampactl/pampacli"},
	"console":                    {"orchestrator", "dispatcher", "internal/*"},
	"dispatcher/metrics":         {"dispatcher", "internal/*"},
	"cmd/pampactl/pampacli":      {"orchestrator", "dispatcher", "dispatcher/metrics", "worker", "protocol", "console", "sshx", "internal/*"},
	"cmd/pampa-worker":           {"cmd/pampa-worker/workercli"},
	"cmd/pampa-worker/workercli": {"orchestrator", "worker", "internal/*"},
}

// forbidden lists outside packages a package must not import: the leaf
// packages and the worker never talk SQL.
var forbidden = map[string][]string{
	"protocol": {"github.com/jackc/pgx/v5"},
	"sshx":     {"github.com/jackc/pgx/v5"},
	"deploy":   {"github.com/jackc/pgx/v5"},
	// The worker-only build stays lean: what it links, idle workers map.
	"cmd/pampa-worker/workercli": {"github.com/urfave/cli/v2", "github.com/pampa-go/pampa/console", "html/template",
		"github.com/prometheus/client_golang/prometheus"},
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func TestImportArrows(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "-deps=false", module+"...").Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	seen := 0
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, module)
		if strings.HasPrefix(rel, "internal/") || rel == p.ImportPath {
			continue // test helpers may use whatever they test
		}
		seen++
		rules, ok := allowed[rel]
		if !ok {
			t.Errorf("package %s is not in the table of allowed imports; add it to allowed in %s", rel, "internal/layers/layers_test.go")
			continue
		}
		for _, imp := range p.Imports {
			if dep, ok := strings.CutPrefix(imp, module); ok {
				if !permitted(rules, dep) {
					t.Errorf("%s imports %s; allowed: %v", rel, dep, rules)
				}
			}
		}
		// Forbidden outside packages count through any dependency.
		out, err := exec.Command("go", "list", "-deps", p.ImportPath).Output()
		if err != nil {
			t.Fatal(err)
		}
		deps := strings.Fields(string(out))
		for _, f := range forbidden[rel] {
			if slices.ContainsFunc(deps, func(d string) bool { return d == f || strings.HasPrefix(d, f+"/") }) {
				t.Errorf("%s depends on %s, which it must not", rel, f)
			}
		}
	}
	if seen < len(allowed)-1 {
		t.Errorf("saw %d packages of the module, want at least %d", seen, len(allowed)-1)
	}
}

func permitted(rules []string, dep string) bool {
	for _, r := range rules {
		if r == dep || (r == "internal/*" && strings.HasPrefix(dep, "internal/")) {
			return true
		}
	}
	return false
}
