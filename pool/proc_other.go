//go:build unix && !linux

package pool

import "syscall"

// awaitExit cannot wait without reaping here: it says so at once, and
// the process group is not killed after a worker exits on its own.
func awaitExit(int) bool { return false }

// unreadBytes cannot count here: output between jobs is found only once
// it was read, by the next job's read.
func unreadBytes(uintptr) (int, syscall.Errno) { return 0, 0 }
