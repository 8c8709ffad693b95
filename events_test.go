package deskoauth

import (
	"context"
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// ancestryProbe is a test module that nests: with chain > 1 it loads one
// probe with chain-1, with chain 1 two leaf probes (chain 0), one after
// the other, as Caddy loads the handlers of a route. Each probe keeps the
// context it was provisioned with and, like desko_auth, its own copy.
type ancestryProbe struct {
	Chain int `json:"chain,omitempty"`

	ctx      caddy.Context
	own      caddy.Context
	ok       bool
	children []*ancestryProbe
}

func init() { caddy.RegisterModule(ancestryProbe{}) }

func (ancestryProbe) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "desko_auth_test.ancestry_probe", New: func() caddy.Module { return new(ancestryProbe) }}
}

func (p *ancestryProbe) Provision(ctx caddy.Context) error {
	p.ctx = ctx
	p.own, p.ok = withOwnAncestry(ctx)
	n, chain := 1, p.Chain-1
	switch {
	case p.Chain == 0:
		return nil
	case p.Chain == 1:
		n = 2
	}
	for range n {
		m, err := ctx.LoadModuleByID("desko_auth_test.ancestry_probe", fmt.Appendf(nil, `{"chain":%d}`, chain))
		if err != nil {
			return err
		}
		p.children = append(p.children, m.(*ancestryProbe))
	}
	return nil
}

// TestWithOwnAncestry fails when Caddy's Context no longer has the field
// withOwnAncestry copies (the events would then name whatever handler was
// provisioned after desko_auth as their origin), and checks that the copy
// keeps the module it was taken for when its siblings are provisioned.
func TestWithOwnAncestry(t *testing.T) {
	root, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// Three probes deep, the third's ancestry has room (length 3, capacity
	// 4), so its two children's ancestries share one backing array, as
	// desko_auth's and reverse_proxy's do in a handle block.
	m, err := root.LoadModuleByID("desko_auth_test.ancestry_probe", []byte(`{"chain":3}`))
	if err != nil {
		t.Fatal(err)
	}
	p := m.(*ancestryProbe)
	chain := []caddy.Module{p}
	for len(p.children) == 1 {
		p = p.children[0]
		chain = append(chain, p)
	}
	if len(p.children) != 2 {
		t.Fatalf("the probe at depth %d has %d children, want 2", len(chain), len(p.children))
	}
	first, second := p.children[0], p.children[1]
	if !first.ok {
		t.Fatal("caddy.Context has no field ancestry of type []caddy.Module any more: withOwnAncestry cannot copy it, " +
			"and desko_auth's events would name the handler after it as their origin; find what replaced it in Caddy's context.go")
	}
	if got := first.own.Module(); got != first {
		t.Errorf("own context's Module() = %T %p, want the probe it was provisioned for (%p)", got, got, first)
	}
	want := append(chain, first)
	if got := first.own.Modules(); len(got) != len(want) || got[len(got)-1] != first || got[0] != chain[0] {
		t.Errorf("own context's Modules() = %v, want %v", got, want)
	}
	// What the copy is for: Caddy's own context of the first leaf now names
	// its sibling. If a Caddy stops sharing the array, the copy is
	// harmless; say so, so the workaround can go.
	if first.ctx.Module() == second {
		t.Log("Caddy still shares ancestry arrays between siblings: the provisioning context of the first names the second")
	} else {
		t.Log("this Caddy no longer shares ancestry arrays between siblings: withOwnAncestry is no longer needed")
	}
}
