package run

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2/ktesting"
)

func TestLimitMemory(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		env   string
		want  int64 // 0: not set
	}{
		"cgroup v2 limit":         {files: map[string]string{"memory.max": "134217728\n"}, want: 120795955},
		"cgroup v2 no limit":      {files: map[string]string{"memory.max": "max\n"}},
		"cgroup v1 limit":         {files: map[string]string{"memory/memory.limit_in_bytes": "67108864\n"}, want: 60397977},
		"cgroup v1 no limit":      {files: map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}},
		"no cgroup files":         {},
		"GOMEMLIMIT wins":         {files: map[string]string{"memory.max": "134217728\n"}, env: "50MiB"},
		"not a number is ignored": {files: map[string]string{"memory.max": "lots\n"}},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			for f, content := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, f), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var got int64
			logger, _ := ktesting.NewTestContext(t)
			limitMemory(logger, root, tc.env, func(n int64) int64 { got = n; return 0 })
			if got != tc.want {
				t.Fatalf("set %d, want %d", got, tc.want)
			}
		})
	}
}
