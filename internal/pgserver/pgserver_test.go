package pgserver

import "testing"

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	if compareVersions("15", "9.6") <= 0 || compareVersions("9.6", "9.5") <= 0 || compareVersions("16", "16") != 0 {
		t.Error("compareVersions orders versions wrongly")
	}
}
