package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// stepRecord keeps, in a file, the process groups of the steps a worker
// runs, so that the next process under the same id kills what a killed one
// left: a step's leader dies with its worker (Pdeathsig), but children it
// spawned in its group would not. With slots, several run at once.
type stepRecord struct {
	path   string
	mu     sync.Mutex
	groups map[int]uint64 // pgid → its leader's start time
}

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
func (r *stepRecord) add(pgid int) {
	start, _, ok := procStart(pgid)
	if !ok || r.path == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.groups == nil {
		r.groups = map[int]uint64{}
	}
	r.groups[pgid] = start
	r.write()
}

// remove forgets a step that ended.
func (r *stepRecord) remove(pgid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.groups, pgid)
	r.write()
}

// write saves the groups, or removes the file when there is none. Called
// with mu held.
func (r *stepRecord) write() {
	if r.path == "" {
		return
	}
	if len(r.groups) == 0 {
		_ = os.Remove(r.path)
		return
	}
	var b []byte
	for pgid, start := range r.groups {
		b = fmt.Appendf(b, "%d %d\n", pgid, start)
	}
	_ = os.MkdirAll(filepath.Dir(r.path), 0o755)
	_ = os.WriteFile(r.path, b, 0o644)
}

// killLeftovers kills every process of a recorded group that started no
// earlier than the group's leader: that rules out an unrelated group that
// took the number since. It returns how many it killed.
func (r *stepRecord) killLeftovers() int {
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
	if r.path != "" {
		_ = os.Remove(r.path)
	}
	return killed
}
