package run

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// memoryShare is the part of the container's memory limit given to the Go
// heap's soft limit: the rest is for stacks, the runtime and what the
// kernel counts against the cgroup besides.
const memoryShare = 0.9

// cgroupLimits are the files that hold the container's memory limit, cgroup
// v2 first, then v1.
var cgroupLimits = []string{"memory.max", "memory/memory.limit_in_bytes"}

// LimitMemory tells the Go runtime the container's memory limit: unless
// GOMEMLIMIT is set, the heap's soft limit becomes 90% of the cgroup's, so
// that the collector works harder as the heap nears it, instead of the
// kernel killing the process on a burst a collection would have absorbed.
// Without a limit it changes nothing. It logs what it set.
func LimitMemory(logger klog.Logger) {
	limitMemory(logger, "/sys/fs/cgroup", os.Getenv("GOMEMLIMIT"), debug.SetMemoryLimit)
}

func limitMemory(logger klog.Logger, root, env string, set func(int64) int64) {
	if env != "" {
		logger.Info("Go memory limit from GOMEMLIMIT", "GOMEMLIMIT", env)
		return
	}
	limit, file, err := cgroupLimit(root)
	switch {
	case err != nil:
		logger.Info("No container memory limit read; the Go heap has no soft limit", "err", err)
	case limit == 0:
		logger.V(2).Info("No container memory limit; the Go heap has no soft limit", "file", file)
	default:
		soft := int64(float64(limit) * memoryShare)
		set(soft)
		logger.Info("Go memory limit set from the container's", "containerLimitBytes", limit, "goMemLimitBytes", soft, "file", file)
	}
}

// cgroupLimit reads the memory limit of the process's cgroup, as mounted in
// a container; 0 means none.
func cgroupLimit(root string) (int64, string, error) {
	for _, name := range cgroupLimits {
		file := filepath.Join(root, name)
		b, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, file, fmt.Errorf("read memory limit: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, file, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return 0, file, fmt.Errorf("memory limit in %s is %q: not a number of bytes", file, s)
		}
		// cgroup v1 says "no limit" with a huge number (a page-rounded
		// int64 max).
		if n >= 1<<62 {
			return 0, file, nil
		}
		return n, file, nil
	}
	return 0, "", nil
}
