package worker

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits bound what each command step of a worker may use: the seed's
// max_ram, max_cpu, max_disk_io and max_net_io, set per node. 0 is no
// limit. Go handlers run inside the worker process and are not limited.
type Limits struct {
	RAMMiB     int // max_ram: resident memory of the step's processes
	CPUPercent int // max_cpu: % of one CPU
	DiskMBps   int // max_disk_io: reads and writes on the work dir's device, each
	NetMBps    int // max_net_io
}

func (l Limits) any() bool {
	return l.RAMMiB > 0 || l.CPUPercent > 0 || l.DiskMBps > 0 || l.NetMBps > 0
}

// How a limit is enforced.
const (
	ByKernel = "kernel" // a cgroup of the step's own
	ByWorker = "worker" // the worker watches the step
	ByNone   = "none"
)

// LimitPlan says how one limit is enforced on this host, and why.
type LimitPlan struct {
	Limit  string `json:"limit"` // max_ram, max_cpu, max_disk_io, max_net_io
	Value  int    `json:"value"`
	Unit   string `json:"unit"`
	By     string `json:"by"` // kernel, worker or none
	Reason string `json:"reason"`
}

// cgroups is the cgroup hierarchy steps are put in: v2 (one directory for
// every controller) or v1 (one per controller).
type cgroups struct {
	v2   bool
	base map[string]string // controller → directory under which step groups are made
	dev  string            // MAJ:MIN of the work dir's block device, for io limits; "" for none
	why  string            // why there is none, when base is empty
}

// findCgroups looks for cgroup directories this process may make step
// groups in: it must be root, with the hierarchy mounted writable.
func findCgroups(workDir string) cgroups {
	var cg cgroups
	if os.Geteuid() != 0 {
		cg.why = "the worker is not root, and delegated cgroups are not used"
		return cg
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cg.v2 = true
		base := "/sys/fs/cgroup/pampa"
		if err := os.MkdirAll(base, 0o755); err != nil {
			cg.why = "cannot make " + base + ": " + err.Error()
			return cg
		}
		// The root group may hold processes and children; pampa holds
		// none, so its children may use the controllers it enables.
		for _, c := range []string{"memory", "cpu", "io"} {
			_ = os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+"+c), 0)
			_ = os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+"+c), 0)
		}
		have, _ := os.ReadFile(filepath.Join(base, "cgroup.subtree_control"))
		cg.base = map[string]string{}
		for _, c := range strings.Fields(string(have)) {
			cg.base[c] = base
		}
	} else {
		cg.base = map[string]string{}
		own := ownCgroupsV1()
		for _, c := range []string{"memory", "cpu", "blkio"} {
			mount := "/sys/fs/cgroup/" + c
			if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
				continue
			}
			base := filepath.Join(mount, own[c], "pampa")
			if err := os.MkdirAll(base, 0o755); err == nil {
				key := c
				if c == "blkio" {
					key = "io" // v2's name, which the plan uses
				}
				cg.base[key] = base
			}
		}
	}
	if len(cg.base) == 0 {
		cg.why = "no writable cgroup hierarchy with the memory, cpu or io controller"
	}
	cg.dev = blockDevice(workDir)
	return cg
}

// ownCgroupsV1 reads this process's group per v1 controller.
func ownCgroupsV1() map[string]string {
	out := map[string]string{}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

// blockDevice returns MAJ:MIN of the block device holding dir, or "" when
// it is not a block device (overlay, tmpfs).
func blockDevice(dir string) string {
	var st syscall.Stat_t
	if syscall.Stat(dir, &st) != nil {
		return ""
	}
	maj, minor := unix.Major(st.Dev), unix.Minor(st.Dev)
	if maj == 0 {
		return ""
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d", maj, minor)); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", maj, minor)
}

// PlanLimits says how each of l would be enforced for a worker on this
// host whose work dir is workDir (what `nodes check` reports).
func PlanLimits(l Limits, workDir string) []LimitPlan {
	return planLimits(l, findCgroups(workDir), false)
}

// planLimits decides how each set limit is enforced here.
func planLimits(l Limits, cg cgroups, noKernel bool) []LimitPlan {
	kernel := func(controller string) (bool, string) {
		switch {
		case noKernel:
			return false, "kernel limits turned off"
		case cg.base[controller] == "":
			if cg.why != "" {
				return false, cg.why
			}
			return false, "the " + controller + " cgroup controller is not available"
		}
		v := "cgroup v1"
		if cg.v2 {
			v = "cgroup v2"
		}
		return true, v + " " + controller + " controller"
	}
	var out []LimitPlan
	if l.RAMMiB > 0 {
		p := LimitPlan{Limit: "max_ram", Value: l.RAMMiB, Unit: "MiB"}
		if ok, why := kernel("memory"); ok {
			p.By, p.Reason = ByKernel, why
		} else {
			p.By, p.Reason = ByWorker, why+"; the worker kills a step whose processes hold more"
		}
		out = append(out, p)
	}
	if l.CPUPercent > 0 {
		p := LimitPlan{Limit: "max_cpu", Value: l.CPUPercent, Unit: "% of one CPU"}
		if ok, why := kernel("cpu"); ok {
			p.By, p.Reason = ByKernel, why
		} else {
			p.By, p.Reason = ByWorker, why+"; the step runs at nice 19 (it yields the CPU, it is not capped)"
		}
		out = append(out, p)
	}
	if l.DiskMBps > 0 {
		p := LimitPlan{Limit: "max_disk_io", Value: l.DiskMBps, Unit: "MB/s"}
		ok, why := kernel("io")
		switch {
		case ok && cg.dev == "":
			p.By, p.Reason = ByNone, "the work dir is not on a block device the io controller can throttle"
		case ok:
			p.By, p.Reason = ByKernel, why+" on device "+cg.dev+" (the work dir's)"
		default:
			p.By, p.Reason = ByNone, why
		}
		out = append(out, p)
	}
	if l.NetMBps > 0 {
		out = append(out, LimitPlan{Limit: "max_net_io", Value: l.NetMBps, Unit: "MB/s", By: ByNone,
			Reason: "cgroups do not limit network bandwidth (that takes tc on the node)"})
	}
	return out
}

// stepLimits applies a worker's limits to one command step.
type stepLimits struct {
	limits Limits
	plan   map[string]string // limit → how
	cg     cgroups
	dirs   []string // the step's cgroup directories
	fd     int      // v2: the group's directory, for clone into it; -1
	killed note
}

// note is what the watcher says, for run to read.
type note struct {
	mu  sync.Mutex
	msg string
}

func (n *note) set(msg string) { n.mu.Lock(); n.msg = msg; n.mu.Unlock() }
func (n *note) get() string    { n.mu.Lock(); defer n.mu.Unlock(); return n.msg }

var stepSeq struct {
	mu sync.Mutex
	n  int
}

// newStepLimits makes the step's cgroup, if the plan has kernel limits.
func newStepLimits(l Limits, plans []LimitPlan, cg cgroups, worker string) (*stepLimits, error) {
	s := &stepLimits{limits: l, plan: map[string]string{}, cg: cg, fd: -1}
	for _, p := range plans {
		s.plan[p.Limit] = p.By
	}
	if !s.usesKernel() {
		return s, nil
	}
	stepSeq.mu.Lock()
	stepSeq.n++
	name := fmt.Sprintf("%s.%d.%d", worker, os.Getpid(), stepSeq.n)
	stepSeq.mu.Unlock()
	write := func(dir, file, value string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
			return fmt.Errorf("set %s of the step's cgroup: %w", file, err)
		}
		return nil
	}
	made := map[string]string{}
	for _, c := range []string{"memory", "cpu", "io"} {
		if base := cg.base[c]; base != "" && made[base] == "" {
			dir := filepath.Join(base, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				s.remove()
				return nil, fmt.Errorf("make the step's cgroup: %w", err)
			}
			made[base] = dir
			s.dirs = append(s.dirs, dir)
		}
	}
	dir := func(c string) string { return made[cg.base[c]] }
	var err error
	if s.plan["max_ram"] == ByKernel {
		b := strconv.Itoa(l.RAMMiB << 20)
		if cg.v2 {
			err = errors.Join(write(dir("memory"), "memory.max", b), tryWrite(dir("memory"), "memory.swap.max", "0"))
		} else {
			err = write(dir("memory"), "memory.limit_in_bytes", b)
		}
	}
	if s.plan["max_cpu"] == ByKernel && err == nil {
		quota := strconv.Itoa(l.CPUPercent * 1000) // µs per 100 ms period
		if cg.v2 {
			err = write(dir("cpu"), "cpu.max", quota+" 100000")
		} else {
			err = errors.Join(write(dir("cpu"), "cpu.cfs_period_us", "100000"), write(dir("cpu"), "cpu.cfs_quota_us", quota))
		}
	}
	if s.plan["max_disk_io"] == ByKernel && err == nil {
		bps := strconv.Itoa(l.DiskMBps * 1000000)
		if cg.v2 {
			err = write(dir("io"), "io.max", cg.dev+" rbps="+bps+" wbps="+bps)
		} else {
			err = errors.Join(write(dir("io"), "blkio.throttle.read_bps_device", cg.dev+" "+bps),
				write(dir("io"), "blkio.throttle.write_bps_device", cg.dev+" "+bps))
		}
	}
	if err != nil {
		s.remove()
		return nil, err
	}
	if cg.v2 {
		fd, err := syscall.Open(s.dirs[0], syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			s.remove()
			return nil, fmt.Errorf("open the step's cgroup: %w", err)
		}
		s.fd = fd
	}
	return s, nil
}

func tryWrite(dir, file, value string) error {
	if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
		return nil // the kernel has no such knob (no swap accounting)
	}
	return os.WriteFile(filepath.Join(dir, file), []byte(value), 0)
}

func (s *stepLimits) usesKernel() bool {
	for _, by := range s.plan {
		if by == ByKernel {
			return true
		}
	}
	return false
}

// sysProcAttr puts the step in its cgroup as it is made (v2).
func (s *stepLimits) sysProcAttr(a *syscall.SysProcAttr) {
	if s.fd >= 0 {
		a.UseCgroupFD, a.CgroupFD = true, s.fd
	}
}

// v1Enter is the shell that puts itself in the step's v1 groups and then
// becomes the step: moved from outside after it starts, the step could
// fork first and leave its children out.
const v1Enter = `IFS=:; for f in $PAMPA_CGROUP_PROCS; do echo $$ > "$f" || exit 126; done; unset PAMPA_CGROUP_PROCS; exec "$@"`

// wrap makes cmd enter the step's v1 groups before it runs (v2 clones it
// straight into its group, see sysProcAttr).
func (s *stepLimits) wrap(cmd *exec.Cmd) {
	if s.cg.v2 || len(s.dirs) == 0 || cmd.Err != nil {
		return
	}
	var procs []string
	for _, d := range s.dirs {
		procs = append(procs, filepath.Join(d, "cgroup.procs"))
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return // nodes check requires sh; without it the step runs outside its groups
	}
	cmd.Args = append([]string{"sh", "-c", v1Enter, "sh", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = sh
	cmd.Env = append(cmd.Env, "PAMPA_CGROUP_PROCS="+strings.Join(procs, ":"))
}

// started lowers the step's priority when the worker caps CPU by
// niceness, and watches its memory when the worker caps that. stop ends
// the watch.
func (s *stepLimits) started(pid int) (stop func()) {
	if s.plan["max_cpu"] == ByWorker {
		_ = syscall.Setpriority(syscall.PRIO_PGRP, pid, 19)
	}
	if s.plan["max_ram"] != ByWorker {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		limit := int64(s.limits.RAMMiB) << 20
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if used := groupRSS(pid); used > limit {
				s.killed.set(fmt.Sprintf("max_ram %d MiB: the step's processes held %d MiB; the worker killed them",
					s.limits.RAMMiB, used>>20))
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// groupRSS sums the resident memory of the processes in process group pgid.
func groupRSS(pgid int) int64 {
	procs, _ := os.ReadDir("/proc")
	var sum int64
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if _, pg, ok := procStart(pid); !ok || pg != pgid {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				sum += kb << 10
			}
		}
		f.Close()
	}
	return sum
}

// verdict names the limit that ended the step, if one did: the worker's
// kill, or the kernel's OOM killer in the step's group.
func (s *stepLimits) verdict() string {
	if msg := s.killed.get(); msg != "" {
		return msg
	}
	if s.plan["max_ram"] != ByKernel {
		return ""
	}
	file := "memory.oom_control"
	if s.cg.v2 {
		file = "memory.events"
	}
	for _, d := range s.dirs {
		data, err := os.ReadFile(filepath.Join(d, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if n, ok := strings.CutPrefix(line, "oom_kill "); ok && strings.TrimSpace(n) != "0" {
				return fmt.Sprintf("max_ram %d MiB: the step ran out of memory and the kernel killed it", s.limits.RAMMiB)
			}
		}
	}
	return ""
}

// remove deletes the step's groups once its processes are gone.
func (s *stepLimits) remove() {
	if s.fd >= 0 {
		_ = syscall.Close(s.fd)
		s.fd = -1
	}
	for _, d := range s.dirs {
		// A process left in the group (the step's group was killed, a
		// straggler may still be exiting) keeps it busy for a moment.
		for range 50 {
			if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			_ = tryWrite(d, "cgroup.kill", "1")
			time.Sleep(20 * time.Millisecond)
		}
	}
}
