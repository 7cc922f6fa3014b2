//go:build unix

package pool

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// ownProcessGroup makes cmd start in a process group of its own, so a kill
// reaches whatever the worker started too.
func ownProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// killGroup SIGKILLs the process's group, and the process itself in case
// it was started without a group of its own (a Factory outside this
// package may do that).
func killGroup(p *os.Process) {
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	_ = p.Kill()
}

// residentBytes returns the resident memory of pid from /proc, or 0 where
// it cannot be read.
func residentBytes(pid int) uint64 {
	statm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(statm))
	if len(fields) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}

// pendingBytes returns a function that says how many bytes wait unread on
// conn, or nil if conn is not a syscall.Conn. The function is for one
// goroutine at a time.
func pendingBytes(conn any) func() (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	c := &unreadCounter{raw: raw}
	c.count = c.countFd // bound once: a call allocates nothing
	return c.unread
}

type unreadCounter struct {
	raw   syscall.RawConn
	count func(fd uintptr) bool
	n     int
	errno syscall.Errno
}

func (c *unreadCounter) unread() (int, error) {
	if err := c.raw.Read(c.count); err != nil {
		return 0, err
	}
	if c.errno != 0 {
		return 0, c.errno
	}
	return c.n, nil
}

func (c *unreadCounter) countFd(fd uintptr) bool {
	c.n, c.errno = unreadBytes(fd)
	return true
}
