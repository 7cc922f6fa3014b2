//go:build linux

package pool

import (
	"syscall"
	"unsafe"
)

// awaitExit blocks until process pid has exited, without reaping it, so
// that its pid and process group id stay its own until cmd.Wait. It
// returns false if pid could not be waited for.
func awaitExit(pid int) bool {
	const pPID = 1     // idtype_t P_PID
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if errno != syscall.EINTR {
			return errno == 0
		}
	}
}

// unreadBytes returns how many bytes wait to be read on fd.
func unreadBytes(fd uintptr) (int, syscall.Errno) {
	var n int32
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	return int(n), errno
}
