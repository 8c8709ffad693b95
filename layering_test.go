package deskoauth

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// engineFiles are the token engine: the shared refreshing token source and
// its parts. They import neither Caddy nor certmagic, and use nothing
// declared in the handler's files: dependencies run one way, handler →
// source → engine parts.
var engineFiles = []string{
	"tokensource.go", "defaults.go", "clock.go", "token.go", "tokenerror.go", "scrub.go", "answer.go",
	"request.go", "authstyle.go", "schedule.go", "status.go", "rejection.go", "shared.go",
}

func TestEngineLayering(t *testing.T) {
	fset := token.NewFileSet()
	all, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*ast.File{}
	declaredIn := map[string]string{} // top-level name → file (methods excluded)
	for _, name := range all {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = f
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					declaredIn[d.Name.Name] = name
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						declaredIn[s.Name.Name] = name
					case *ast.ValueSpec:
						for _, n := range s.Names {
							declaredIn[n.Name] = name
						}
					}
				}
			}
		}
	}
	for _, name := range engineFiles {
		f, ok := files[name]
		if !ok {
			t.Errorf("engine file %s does not exist: update engineFiles", name)
			continue
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/caddyserver/") {
				t.Errorf("%s imports %s: the engine must not depend on Caddy or certmagic", name, path)
			}
		}
		// Identifiers the parser could not resolve within the file are
		// package-level (or universe) names: none may be the handler's.
		skip := map[*ast.Ident]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				skip[n.Sel] = true
			case *ast.KeyValueExpr:
				if id, ok := n.Key.(*ast.Ident); ok {
					skip[id] = true // a field name in a composite literal
				}
			case *ast.Ident:
				if n.Obj != nil || skip[n] || n.Name == "_" {
					return true
				}
				if from, ok := declaredIn[n.Name]; ok && !slices.Contains(engineFiles, from) {
					t.Errorf("%s: %s uses %s, declared in the handler's %s", fset.Position(n.Pos()), name, n.Name, from)
				}
			}
			return true
		})
	}
	if _, err := os.Stat("module.go"); err != nil {
		t.Fatal("run from the package directory")
	}
}

// TestEngineBuildsAsAPackageOfItsOwn compiles the engine files alone, as a
// package of their own (through a go command overlay that puts them in a
// directory that does not exist on disk), and checks with go list -deps
// that nothing they need comes from Caddy or certmagic. A use of anything
// declared in the handler's files fails the build.
func TestEngineBuildsAsAPackageOfItsOwn(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	const pkg = "./internal/engineonly" // virtual: only in the overlay
	replace := map[string]string{}
	for _, f := range engineFiles {
		replace[filepath.Join(root, pkg, f)] = filepath.Join(root, f)
	}
	b, _ := json.Marshal(map[string]any{"Replace": replace})
	overlay := filepath.Join(t.TempDir(), "overlay.json")
	if err := os.WriteFile(overlay, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(goCmd, "build", "-overlay", overlay, pkg).CombinedOutput(); err != nil {
		t.Fatalf("the engine files do not build on their own: %v\n%s", err, out)
	}
	out, err := exec.Command(goCmd, "list", "-overlay", overlay, "-deps", "-f", "{{.ImportPath}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages: the check would prove nothing", len(deps))
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/caddyserver/") {
			t.Errorf("the engine depends on %s", d)
		}
	}
}
