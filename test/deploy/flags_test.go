package deploy_test

import (
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// binaryDirs are the packages whose sources register each binary's flags:
// its main package and its app package.
var binaryDirs = map[string][]string{
	"driver":   {"../../driver", "../../driver/app"},
	"approver": {"../../approver", "../../approver/app"},
}

// flagFuncs maps the flag registration functions (of package flag and of a
// *flag.FlagSet) to the index of their name argument.
var flagFuncs = map[string]int{
	"String": 0, "Bool": 0, "Int": 0, "Int64": 0, "Uint": 0, "Uint64": 0, "Float64": 0, "Duration": 0,
	"Func": 0, "BoolFunc": 0,
	"StringVar": 1, "BoolVar": 1, "IntVar": 1, "Int64Var": 1, "UintVar": 1, "Uint64Var": 1,
	"Float64Var": 1, "DurationVar": 1, "Var": 1, "TextVar": 1,
}

// registeredFlags returns the flag names a binary registers, read from its
// sources (the binaries bind flags in package main, which a test cannot
// import), plus klog's flags (klog.InitFlags). The integration test checks
// the same against the built binaries' -h output.
func registeredFlags(t testing.TB, binary string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	fset := token.NewFileSet()
	for _, dir := range binaryDirs[binary] {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				i, ok := flagFuncs[sel.Sel.Name]
				if !ok || len(call.Args) <= i {
					return true
				}
				lit, ok := call.Args[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				if name, err := strconv.Unquote(lit.Value); err == nil {
					names[name] = true
				}
				return true
			})
		}
	}
	if len(names) == 0 {
		if _, err := os.Stat(binaryDirs[binary][0]); err != nil {
			t.Fatalf("no sources for the %s binary: %v", binary, err)
		}
		t.Fatalf("found no flags registered by the %s binary in %v", binary, binaryDirs[binary])
	}
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.VisitAll(func(f *flag.Flag) { names[f.Name] = true })
	return names
}

// argFlag returns the flag name of a command-line argument ("--a=b", "-a",
// "--a"), or "" for a positional argument.
func argFlag(arg string) string {
	if !strings.HasPrefix(arg, "-") {
		return ""
	}
	name := strings.TrimLeft(arg, "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		name = name[:i]
	}
	return name
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
