package deskoauth

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves the desko_auth endpoints on Caddy's admin listener:
//
//	GET  /desko_auth/status   the token sources and their health
//	POST /desko_auth/refresh  force a refresh of every source (single-flight)
//	GET  /desko_auth/tenants  the live tenants of the tenant blocks, paged
//	                          (?page=1&per_page=100)
//
// Neither ever shows a token or a secret.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.desko_auth",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/desko_auth/status", Handler: caddy.AdminHandlerFunc(a.status)},
		{Pattern: "/desko_auth/refresh", Handler: caddy.AdminHandlerFunc(a.refresh)},
		{Pattern: "/desko_auth/tenants", Handler: caddy.AdminHandlerFunc(a.tenants)},
	}
}

// SourceStatus is one token source as the admin API shows it: its label,
// what tells it apart from other sources (never a value that may be
// secret: parameter and header names only, the token URL without its
// query), and its health.
type SourceStatus struct {
	Source       string         `json:"source"`
	ClientID     string         `json:"client_id"`
	TokenURL     string         `json:"token_url"`
	Scopes       []string       `json:"scopes"`
	AuthStyle    string         `json:"auth_style"`
	Params       []string       `json:"params,omitempty"`
	TokenHeaders []string       `json:"token_headers,omitempty"`
	Timeout      caddy.Duration `json:"timeout"`
	DefaultTTL   caddy.Duration `json:"default_ttl"`
	CustomTLS    bool           `json:"custom_tls,omitempty"`
	token.Status
	// Sites is how many handlers share the source.
	Sites int `json:"sites"`
	// RefreshError is set by POST /desko_auth/refresh when that refresh
	// failed.
	RefreshError string `json:"refresh_error,omitempty"`
}

// snapshot lists the live sources, sorted by label.
func snapshot() []*source {
	var out []*source
	sources.Range(func(_, v any) bool {
		if s := v.(*source); !s.hidden {
			out = append(out, s)
		}
		return true
	})
	slices.SortFunc(out, func(a, b *source) int { return cmp.Compare(a.label, b.label) })
	return out
}

func describe(s *source) SourceStatus {
	sites, _ := sources.References(s.key)
	scopes := s.scopes
	if scopes == nil {
		scopes = []string{}
	}
	return SourceStatus{
		Source:       s.label,
		ClientID:     s.clientID,
		TokenURL:     s.tokenURL,
		Scopes:       scopes,
		AuthStyle:    s.id.AuthStyle,
		Params:       slices.Sorted(maps.Keys(s.id.Params)),
		TokenHeaders: slices.Sorted(maps.Keys(s.id.TokenHeaders)),
		Timeout:      caddy.Duration(s.id.Timeout),
		DefaultTTL:   caddy.Duration(s.id.DefaultTTL),
		CustomTLS:    s.id.TLS != "",
		Status:       s.engine.Status(),
		Sites:        sites,
	}
}

func (a *AdminAPI) status(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	list := []SourceStatus{}
	for _, s := range snapshot() {
		list = append(list, describe(s))
	}
	return writeAdminJSON(w, list)
}

// refresh forces a token request for every source at once and answers when
// all are done (each source's request is single-flight with any in flight).
func (a *AdminAPI) refresh(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use POST", r.Method)}
	}
	srcs := snapshot()
	errs := make([]error, len(srcs))
	var wg sync.WaitGroup
	for i, s := range srcs {
		wg.Go(func() {
			_, errs[i] = s.engine.Refresh(r.Context())
		})
	}
	wg.Wait()
	list := []SourceStatus{}
	for i, s := range srcs {
		st := describe(s)
		if errs[i] != nil {
			st.RefreshError = errs[i].Error()
		}
		list = append(list, st)
	}
	return writeAdminJSON(w, list)
}

// TenantStatus is one live tenant as the admin API shows it.
type TenantStatus struct {
	// Block is the tenant block's label (its series' source label).
	Block  string `json:"block"`
	Tenant string `json:"tenant"`
	// Kind is "named" (a credentials block) or "dir" (credentials_dir).
	Kind string `json:"kind"`
	// Source is the label of the tenant's own token source.
	Source   string       `json:"source"`
	ClientID string       `json:"client_id"`
	LastUsed time.Time    `json:"last_used"`
	Status   token.Status `json:"status"`
}

// TenantPage is a page of live tenants.
type TenantPage struct {
	Total   int            `json:"total"`
	Page    int            `json:"page"`
	PerPage int            `json:"per_page"`
	Tenants []TenantStatus `json:"tenants"`
}

// maxPerPage bounds a page of tenants.
const maxPerPage = 1000

// tenants lists the live tenants of every tenant block, sorted by block
// and tenant, a page at a time.
func (a *AdminAPI) tenants(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	page, perPage := 1, 100
	for name, dst := range map[string]*int{"page": &page, "per_page": &perPage} {
		if v := r.URL.Query().Get(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1_000_000 || (name == "per_page" && n > maxPerPage) {
				return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("%s: want a whole number from 1 (per_page at most %d)", name, maxPerPage)}
			}
			*dst = n
		}
	}
	var all []*tenant
	blockOf := map[*tenant]string{}
	tenantSets.Range(func(_, v any) bool {
		s := v.(*tenantSet)
		s.live.Range(func(_, t any) bool {
			all = append(all, t.(*tenant))
			blockOf[t.(*tenant)] = s.label
			return true
		})
		return true
	})
	slices.SortFunc(all, func(x, y *tenant) int {
		return cmp.Or(cmp.Compare(blockOf[x], blockOf[y]), cmp.Compare(x.name, y.name))
	})
	out := TenantPage{Total: len(all), Page: page, PerPage: perPage, Tenants: []TenantStatus{}}
	for _, t := range all[min((page-1)*perPage, len(all)):min(page*perPage, len(all))] {
		kind := "dir"
		if t.named {
			kind = "named"
		}
		out.Tenants = append(out.Tenants, TenantStatus{Block: blockOf[t], Tenant: t.name, Kind: kind, Source: t.b.src.label,
			ClientID: t.b.src.clientID, LastUsed: time.Unix(0, t.used.Load()).UTC(), Status: t.b.src.engine.Status()})
	}
	return writeAdminJSON(w, out)
}

func writeAdminJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
