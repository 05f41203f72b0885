package socket

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2/ktesting"
)

// sockDir returns a directory short enough for unix socket paths (108 bytes
// with the NUL), removed at the end of the test.
func sockDir(t *testing.T) string {
	t.Helper()
	if dir := t.TempDir(); len(dir) <= 64 {
		return dir
	}
	dir, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		endpoint string
		want     string // "" means an error
	}{
		{"unix:///abs/path", "/abs/path"},
		{"unix:///csi/csi.sock", "/csi/csi.sock"},
		{"", ""},
		{"unix://", ""},
		{"unix://rel/path", ""},
		{"tcp://1.2.3.4:5", ""},
		{"/abs/path", ""},
		{"unix:/abs/path", ""},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint, func(t *testing.T) {
			got, err := ParseEndpoint(tt.endpoint)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("ParseEndpoint(%q) = %q, nil; want an error", tt.endpoint, got)
				}
				if !strings.Contains(err.Error(), "unix:///absolute/path") {
					t.Errorf("error %q does not say what is wanted", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseEndpoint(%q) = %q, %v; want %q, nil", tt.endpoint, got, err, tt.want)
			}
		})
	}
}

// staleSocket leaves at path a socket nobody listens on, as a killed driver
// does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("stale socket not left at %s: %v, %v", path, fi, err)
	}
}

func TestListen(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares dir; the socket path is dir/run/csi/csi.sock.
		setup func(t *testing.T, dir, path string)
		// wantErr are parts of the error; none means success.
		wantErr []string
		// errNamesParent: the error names the socket's directory, not the
		// socket itself.
		errNamesParent bool
		// check runs after Listen, on success or failure.
		check func(t *testing.T, dir, path string)
	}{
		{
			name:  "missing parent directories",
			setup: func(*testing.T, string, string) {},
			check: func(t *testing.T, dir, path string) {
				fi, err := os.Stat(filepath.Dir(path))
				if err != nil || !fi.IsDir() {
					t.Errorf("parent directory not created: %v", err)
				}
			},
		},
		{
			name: "existing parent directory",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, filepath.Dir(path))
			},
		},
		{
			name: "stale socket",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, filepath.Dir(path))
				staleSocket(t, path)
			},
		},
		{
			name: "regular file",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, filepath.Dir(path))
				writeFile(t, path, "keep me")
			},
			wantErr: []string{"is not a socket"},
			check: func(t *testing.T, _, path string) {
				if data, err := os.ReadFile(path); err != nil || string(data) != "keep me" {
					t.Errorf("regular file changed: %q, %v", data, err)
				}
			},
		},
		{
			name: "empty regular file",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, filepath.Dir(path))
				writeFile(t, path, "")
			},
			wantErr: []string{"is not a socket"},
			check: func(t *testing.T, _, path string) {
				if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("empty file removed or changed: %v, %v", fi, err)
				}
			},
		},
		{
			name: "directory",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, path)
				writeFile(t, filepath.Join(path, "inside"), "keep me")
			},
			wantErr: []string{"is not a socket"},
			check: func(t *testing.T, _, path string) {
				if data, err := os.ReadFile(filepath.Join(path, "inside")); err != nil || string(data) != "keep me" {
					t.Errorf("directory or its content removed: %q, %v", data, err)
				}
			},
		},
		{
			name: "empty directory",
			setup: func(t *testing.T, _, path string) {
				mkdir(t, path)
			},
			wantErr: []string{"is not a socket"},
			check: func(t *testing.T, _, path string) {
				if fi, err := os.Lstat(path); err != nil || !fi.IsDir() {
					t.Errorf("empty directory removed: %v, %v", fi, err)
				}
			},
		},
		{
			name: "symlink to a stale socket",
			setup: func(t *testing.T, dir, path string) {
				mkdir(t, filepath.Dir(path))
				target := filepath.Join(dir, "other.sock")
				staleSocket(t, target)
				if err := os.Symlink(target, path); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: []string{"is not a socket"},
			check: func(t *testing.T, dir, path string) {
				if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
					t.Errorf("symlink removed: %v, %v", fi, err)
				}
				if fi, err := os.Lstat(filepath.Join(dir, "other.sock")); err != nil || fi.Mode()&fs.ModeSocket == 0 {
					t.Errorf("symlink's target removed: %v, %v", fi, err)
				}
			},
		},
		{
			name: "parent is a regular file",
			setup: func(t *testing.T, dir, path string) {
				mkdir(t, filepath.Dir(filepath.Dir(path)))
				writeFile(t, filepath.Dir(path), "keep me")
			},
			wantErr:        []string{"create socket directory"},
			errNamesParent: true,
			check: func(t *testing.T, _, path string) {
				if data, err := os.ReadFile(filepath.Dir(path)); err != nil || string(data) != "keep me" {
					t.Errorf("parent file changed: %q, %v", data, err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := sockDir(t)
			path := filepath.Join(dir, "run", "csi", "csi.sock")
			tt.setup(t, dir, path)

			lis, err := Listen(path)
			if tt.check != nil {
				defer tt.check(t, dir, path)
			}
			if len(tt.wantErr) > 0 {
				if err == nil {
					lis.Close()
					t.Fatalf("Listen(%s) succeeded, want an error", path)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				named := path
				if tt.errNamesParent {
					named = filepath.Dir(path)
				}
				if !strings.Contains(err.Error(), named) {
					t.Errorf("error %q does not name %s", err, named)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen(%s): %v", path, err)
			}
			defer lis.Close()
			if got := lis.Addr().String(); got != path {
				t.Errorf("listening on %q, want %q", got, path)
			}
			if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSocket == 0 {
				t.Fatalf("no socket at %s: %v, %v", path, fi, err)
			}
			// The socket is live: a dial reaches this listener.
			accepted := make(chan error, 1)
			go func() {
				c, err := lis.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()
			c, err := net.DialTimeout("unix", path, 5*time.Second)
			if err != nil {
				t.Fatalf("dial %s: %v", path, err)
			}
			c.Close()
			if err := <-accepted; err != nil {
				t.Errorf("accept: %v", err)
			}
		})
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// blocker is a unary interceptor that holds calls for the health service
// named "block" until release is closed (or, with honourCtx, until the
// call's context ends); other calls pass.
type blocker struct {
	entered   chan struct{} // closed when a held call has arrived
	release   chan struct{}
	honourCtx bool
	// handlerDone is closed when the held call's handler returns.
	handlerDone chan struct{}
}

func newBlocker(honourCtx bool) *blocker {
	return &blocker{
		entered:     make(chan struct{}),
		release:     make(chan struct{}),
		honourCtx:   honourCtx,
		handlerDone: make(chan struct{}),
	}
}

func (b *blocker) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if r, ok := req.(*healthpb.HealthCheckRequest); !ok || r.GetService() != "block" {
		return handler(ctx, req)
	}
	defer close(b.handlerDone)
	close(b.entered)
	if b.honourCtx {
		select {
		case <-b.release:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	} else {
		<-b.release
	}
	return handler(ctx, req)
}

type served struct {
	path   string
	cancel context.CancelFunc
	done   chan error // Serve's result
}

// serve runs Serve on a fresh socket with a health server ("" and "block"
// SERVING), intercepted by b if not nil.
func serve(t *testing.T, grace time.Duration, b *blocker) *served {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)

	path := filepath.Join(sockDir(t), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if b != nil {
		opts = append(opts, grpc.UnaryInterceptor(b.intercept))
	}
	srv := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("block", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	s := &served{path: path, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- Serve(ctx, "test server", srv, lis, grace) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(grace + 10*time.Second):
			t.Error("Serve still running at the end of the test")
		}
	})
	if b != nil {
		// Cleanups run last first: release a held call before waiting for
		// Serve.
		t.Cleanup(func() {
			select {
			case <-b.release:
			default:
				close(b.release)
			}
		})
	}
	return s
}

func dial(t *testing.T, path string) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func check(ctx context.Context, c healthpb.HealthClient, service string) error {
	resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return errors.New("status " + resp.GetStatus().String())
	}
	return nil
}

// wait returns Serve's result, failing the test if it takes longer than d.
func (s *served) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(d):
		t.Fatalf("Serve did not return within %v", d)
		return nil
	}
}

// holdCall serves with the given grace and starts a call that the server
// holds until b.release is closed (or, with respectCtx, its context ends).
func holdCall(t *testing.T, grace time.Duration, respectCtx bool) (*served, *blocker, chan error) {
	t.Helper()
	b := newBlocker(respectCtx)
	s := serve(t, grace, b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	c := dial(t, s.path)
	callErr := make(chan error, 1)
	go func() { callErr <- check(ctx, c, "block") }()
	select {
	case <-b.entered:
	case <-ctx.Done():
		t.Fatal("the held call never reached the server")
	}
	return s, b, callErr
}

func assertGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket %s still there after Serve: %v", path, err)
	}
}

func TestServeAnswersAndStops(t *testing.T) {
	s := serve(t, 5*time.Second, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := dial(t, s.path)
	for _, svc := range []string{"", "block"} {
		if err := check(ctx, c, svc); err != nil {
			t.Fatalf("Check(%q) on the socket: %v", svc, err)
		}
	}

	s.cancel()
	if err := s.wait(t, 5*time.Second); err != nil {
		t.Errorf("Serve after cancel = %v, want nil", err)
	}
	assertGone(t, s.path)

	// Nothing answers any more.
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if err := check(short, dial(t, s.path), ""); err == nil {
		t.Error("a call after Serve returned succeeded")
	}
}

func TestServeGraceLetsCallInFlightFinish(t *testing.T) {
	const grace = 10 * time.Second
	s, b, callErr := holdCall(t, grace, false)

	s.cancel()
	// Serve waits for the call, not for the grace to end...
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		t.Fatalf("Serve returned %v while a call was in flight", err)
	case err := <-callErr:
		t.Fatalf("the held call ended before its release: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// ...which completes once released.
	close(b.release)
	select {
	case err := <-callErr:
		if err != nil {
			t.Errorf("call in flight at cancel: %v, want success", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the released call did not complete")
	}
	if err := s.wait(t, 5*time.Second); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	assertGone(t, s.path)
}

func TestServeCutsCallAfterGrace(t *testing.T) {
	const grace = 500 * time.Millisecond
	s, b, callErr := holdCall(t, grace, true)

	start := time.Now()
	s.cancel()
	if err := s.wait(t, grace+time.Second); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if elapsed := time.Since(start); elapsed < grace-50*time.Millisecond {
		t.Errorf("Serve returned after %v, before the grace of %v", elapsed, grace)
	}
	assertGone(t, s.path)

	select {
	case err := <-callErr:
		if err == nil {
			t.Error("the cut call succeeded")
		} else if code := status.Code(err); code != codes.Unavailable && code != codes.Canceled {
			t.Errorf("the cut call failed with %v, want Unavailable or Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cut call did not end on the client")
	}
	// Stop cancels the cut call's context without waiting for its handler:
	// the handler sees it and returns.
	select {
	case <-b.handlerDone:
	case <-time.After(time.Second):
		t.Error("the cut call's handler still runs a second after Serve returned")
	}
}

func TestServeCancelledBeforeStart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	cancel()

	path := filepath.Join(sockDir(t), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "test server", srv, lis, time.Second) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve with a done ctx = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve with a done ctx did not return")
	}
	assertGone(t, path)
}

func TestServeClosedListener(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	path := filepath.Join(sockDir(t), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "kubelet plugin registration", srv, lis, time.Second) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve on a closed listener = nil, want an error")
		}
		for _, want := range []string{"kubelet plugin registration", path} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve on a closed listener did not return")
	}
}
