package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// stepRecord keeps, in a file, the process groups of the steps a worker
// runs, so that the next process under the same id kills what a killed one
// left: a step's leader dies with its worker (Pdeathsig), but children it
// spawned in its group would not.
type stepRecord struct{ path string }

// procStart is a process's start time in clock ticks since boot, field 22
// of /proc/PID/stat; ok is false when the process is gone.
func procStart(pid int) (start uint64, pgrp int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, 0, false
	}
	pgrp, _ = strconv.Atoi(f[2])
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, pgrp, err == nil
}

// add records a step's process group (its leader's pid).
func (r stepRecord) add(pgid int) {
	start, _, ok := procStart(pgid)
	if !ok || r.path == "" {
		return
	}
	_ = os.MkdirAll(filepath.Dir(r.path), 0o755)
	_ = os.WriteFile(r.path, fmt.Appendf(nil, "%d %d\n", pgid, start), 0o644)
}

// clear forgets the running step.
func (r stepRecord) clear() {
	if r.path != "" {
		_ = os.Remove(r.path)
	}
}

// killLeftovers kills every process of a recorded group that started no
// earlier than the group's leader: that rules out an unrelated group that
// took the number since. It returns how many it killed.
func (r stepRecord) killLeftovers() int {
	b, err := os.ReadFile(r.path)
	if err != nil {
		return 0
	}
	killed := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var pgid int
		var start uint64
		if _, err := fmt.Sscan(line, &pgid, &start); err != nil || pgid <= 1 {
			continue
		}
		procs, _ := os.ReadDir("/proc")
		for _, p := range procs {
			pid, err := strconv.Atoi(p.Name())
			if err != nil {
				continue
			}
			if st, pg, ok := procStart(pid); ok && pg == pgid && st >= start {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed++
				}
			}
		}
	}
	r.clear()
	return killed
}
