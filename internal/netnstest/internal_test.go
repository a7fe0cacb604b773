package netnstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSweep checks that New's sweep removes a namespace left by a dead run,
// with the process still running in it.
func TestSweep(t *testing.T) {
	t.Parallel()
	Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The run that left the namespace is a live process of ours that this
	// sweep takes for dead: every other sweep (other test binaries call New
	// at the same time) sees it alive and leaves its namespace alone. A pid
	// really gone would be swept by them too, and the process in it killed
	// before this test saw it there.
	owner := exec.Command("sleep", "600")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = owner.Process.Kill(); _ = owner.Wait() })
	dead := owner.Process.Pid

	ns := fmt.Sprintf("pampa-%d-pdeadbeef", dead)
	if err := ip(ctx, "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = remove(t.Context(), ns, "") })
	orphan := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- orphan.Wait() }()
	t.Cleanup(func() { _ = orphan.Process.Kill() })
	// ip netns exec opens the namespace before it enters it: sweep only once
	// the process is inside, as a dead run's processes long are.
	if err := poll(ctx, func() error {
		out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
		if err != nil {
			return err
		}
		if !slices.Contains(strings.Fields(string(out)), strconv.Itoa(orphan.Process.Pid)) {
			return fmt.Errorf("pid %d not in %s yet", orphan.Process.Pid, ns)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	sweep(ctx, func(pid int) bool { return pid == dead })

	if nsExists(ns) {
		t.Errorf("namespace %s of dead pid %d survived the sweep", ns, dead)
	}
	select {
	case err := <-waited:
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Errorf("process in %s: wait = %v; want killed", ns, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("process in %s still runs 10 s after the sweep", ns)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Errorf("/run/netns/%s still exists", ns)
	}
}

func TestSlotAddrs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		slot        int
		gateway, ip string
	}{
		{1, "198.18.1.1", "198.18.1.2"},
		{255, "198.18.255.1", "198.18.255.2"},
		{256, "198.19.0.1", "198.19.0.2"},
		{maxSlot, "198.19.255.1", "198.19.255.2"},
	} {
		gw, addr := slotAddrs(tc.slot)
		if gw != tc.gateway || addr != tc.ip {
			t.Errorf("slotAddrs(%d) = %s, %s; want %s, %s", tc.slot, gw, addr, tc.gateway, tc.ip)
		}
		if n := len(fmt.Sprintf("pampa-v%d", tc.slot)); n > 15 {
			t.Errorf("link name for slot %d is %d bytes; Linux allows 15", tc.slot, n)
		}
	}
}
