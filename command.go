package deskoauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is the `caddy desko-auth check` command: it obtains one token
// for every credential set of a config, before a deploy.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "desko-auth",
		Usage: "check --config <file> [--adapter <name>] [--json] [--tenant <name>...]",
		Short: "Checks the credentials of every desko_auth credential set in a config",
		Long: `
desko-auth check loads the config the way 'caddy run' would (placeholders
expanded, files read) but starts no server and writes nothing to any
storage. For every credential set it finds (each desko_auth block, each
named credentials block of a tenant block, and, with --tenant NAME, that
tenant of every credentials_dir; sets that make the same source are checked
once) it obtains one token and prints a row: the source label, the tenant,
the client ID, the result (ok; refused with the
token endpoint's reason; tls, redirect, dns or connect with what to
check; unavailable; invalid answer), the token's lifetime, the scopes
granted and the round-trip time, with the client authentication style
and, for private_key_jwt, the key ID. It never prints a token, a secret or
a key.

Exit status: 0 when every set works, 1 when any fails, 2 when the config
itself is invalid (with the message 'caddy validate' gives).`,
		CobraFunc: func(cmd *cobra.Command) {
			check := &cobra.Command{
				Use:   "check --config <file> [--adapter <name>] [--json] [--tenant <name>...]",
				Short: "Obtains one token for every credential set of a config",
				Args:  cobra.NoArgs,
				RunE:  caddycmd.WrapCommandFuncForCobra(cmdCheck),
			}
			check.Flags().StringP("config", "c", "", "Configuration file (required)")
			check.Flags().StringP("adapter", "a", "", "Name of the config adapter (default: caddyfile for a file named Caddyfile)")
			check.Flags().Bool("json", false, "Print one JSON object per credential set")
			check.Flags().StringSlice("tenant", nil, "Also check these tenants of every credentials_dir (repeatable, or comma-separated)")
			cmd.AddCommand(check)
		},
	})
}

// The results of a check.
const (
	checkOK            = "ok"
	checkRefused       = "refused"
	checkUnavailable   = "unavailable"
	checkInvalidAnswer = "invalid answer"
	// checkUnknownTenant is a --tenant that a credentials_dir does not
	// hold.
	checkUnknownTenant = "unknown tenant"
)

// checkRow is one credential set's result. It holds no token and no
// secret.
type checkRow struct {
	Source    string  `json:"source"`
	Tenant    string  `json:"tenant,omitempty"` // the tenant of a tenant block's set
	ClientID  string  `json:"client_id"`
	AuthStyle string  `json:"auth_style"`
	KeyID     string  `json:"key_id,omitempty"` // the kid of a private_key_jwt set's key, if any
	Result    string  `json:"result"`
	Reason    string  `json:"reason,omitempty"`
	Lifetime  string  `json:"lifetime,omitempty"`
	Scopes    string  `json:"scopes,omitempty"`
	RTTMillis float64 `json:"rtt_ms"`
}

func cmdCheck(fl caddycmd.Flags) (int, error) {
	configFile := fl.String("config")
	if configFile == "" {
		return 2, errors.New("--config is required")
	}
	handlers, err := loadForCheck(configFile, fl.String("adapter"))
	if err != nil {
		return 2, err
	}
	tenants, err := fl.GetStringSlice("tenant")
	if err != nil {
		return 2, err
	}
	for _, name := range tenants {
		if !validTenantName(name) {
			return 2, fmt.Errorf("--tenant %q: a tenant name is 1 to %d ASCII letters, digits, '.', '_' or '-', not starting with '.'", name, maxTenantName)
		}
	}
	sets, dirRows, err := checkSets(handlers, tenants)
	if err != nil {
		return 2, err
	}
	rows, secrets := checkAll(sets)
	rows = append(rows, dirRows...)
	if len(rows) == 0 {
		return 1, errors.New("no credential set to check: the config has no desko_auth block, or only tenant blocks with a credentials_dir (name their tenants with --tenant)")
	}
	sc := scrub.New("", "", secrets...)
	if err := printRows(os.Stdout, rows, fl.Bool("json"), sc); err != nil {
		return 1, fmt.Errorf("writing the results: %w", err)
	}
	failed := 0
	for _, r := range rows {
		if r.Result != checkOK {
			failed++
		}
	}
	if failed > 0 {
		return 1, fmt.Errorf("%d of %d credential sets failed", failed, len(rows))
	}
	return 0, nil
}

// loadForCheck loads and validates the config as `caddy validate` does,
// and returns its desko_auth handlers, as configured.
func loadForCheck(configFile, adapter string) ([]*Handler, error) {
	input, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return nil, err
	}
	input = caddy.RemoveMetaFields(input)
	var cfg *caddy.Config
	if err := caddy.StrictUnmarshalJSON(input, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config: %v", err)
	}
	if err := caddy.Validate(cfg); err != nil {
		return nil, err
	}
	var tree any
	if err := json.Unmarshal(input, &tree); err != nil {
		return nil, fmt.Errorf("decoding config: %v", err)
	}
	var handlers []*Handler
	var walkErr error
	walkHandlers(tree, func(raw json.RawMessage) {
		var h Handler
		if err := json.Unmarshal(raw, &h); err != nil && walkErr == nil {
			walkErr = fmt.Errorf("decoding a desko_auth handler: %v", err)
		}
		handlers = append(handlers, &h)
	})
	return handlers, walkErr
}

// walkHandlers calls f with every JSON object of v (depth first, in
// document order) whose "handler" is "desko_auth".
func walkHandlers(v any, f func(json.RawMessage)) {
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "desko_auth" {
			raw, _ := json.Marshal(v)
			f(raw)
			return
		}
		for _, k := range slices.Sorted(maps.Keys(v)) {
			walkHandlers(v[k], f)
		}
	case []any:
		for _, x := range v {
			walkHandlers(x, f)
		}
	}
}

// checkSet is one credential set to check: a block's settings (a tenant's
// on top of its block's), and the credentials of a credentials_dir tenant,
// read from its folder.
type checkSet struct {
	h     *Handler
	creds *token.Credentials // nil: h's own values, expanded
}

// checkSets lists the credential sets of the handlers: each block that is
// not a tenant block; each named credentials block of a tenant block; and
// each of tenants that a tenant block's credentials_dir holds (read as the
// running module reads it, through os.Root). A tenant that no
// credentials_dir holds gets a row of its own, unknown tenant.
func checkSets(handlers []*Handler, tenants []string) ([]checkSet, []checkRow, error) {
	var sets []checkSet
	var rows []checkRow
	found := map[string]bool{}
	dirs := 0
	for _, h := range handlers {
		if !h.tenantMode() {
			sets = append(sets, checkSet{h: h})
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(h.Credentials)) {
			sets = append(sets, checkSet{h: h.forTenant(name, h.Credentials[name])})
		}
		if h.CredentialsDir == "" || len(tenants) == 0 {
			continue
		}
		dirs++
		dir, err := openCredentialsDir(h.CredentialsDir)
		if err != nil {
			return nil, nil, err
		}
		for _, name := range tenants {
			if _, named := h.Credentials[name]; named {
				found[name] = true // a credentials block wins, as in requests; checked above
				continue
			}
			creds, scopes, err := dir.credentials(name)
			switch {
			case errors.Is(err, errNoTenant):
				continue
			case err != nil:
				found[name] = true
				rows = append(rows, checkRow{Tenant: name, Result: checkInvalidConfig, Reason: err.Error()})
				continue
			}
			found[name] = true
			th := h.forTenant(name, &TenantCredentials{Scopes: scopes})
			th.dirTenant = dir.path
			sets = append(sets, checkSet{h: th, creds: creds})
		}
		_ = dir.Close()
	}
	if len(tenants) > 0 && dirs == 0 {
		return nil, nil, errors.New("--tenant: the config has no tenant block with a credentials_dir")
	}
	for _, name := range tenants {
		if !found[name] {
			rows = append(rows, checkRow{Tenant: name, Result: checkUnknownTenant, Reason: "no credentials_dir holds this tenant"})
		}
	}
	return sets, rows, nil
}

// checkAll obtains one token for each distinct source of the sets, in
// parallel, and returns a row per source in the sets' order, with the
// secrets the rows must not show.
func checkAll(sets []checkSet) ([]checkRow, []string) {
	type job struct {
		row  checkRow
		src  *token.Source
		err  error
		done chan struct{}
	}
	var jobs []*job
	var secrets []string
	seen := map[string]bool{}
	for _, set := range sets {
		h := set.h
		j := &job{done: make(chan struct{})}
		jobs = append(jobs, j)
		src, row, creds, key, timeout, err := h.checkSource(set.creds)
		if creds != nil {
			secrets = append(append(secrets, creds.ClientSecret), creds.Secrets...)
			if creds.Key != nil {
				secrets = append(secrets, creds.Key.Secrets()...)
			}
		}
		if err != nil {
			j.row = checkRow{Tenant: h.tenantName, ClientID: h.ClientID, Result: checkInvalidConfig, Reason: err.Error()}
			close(j.done)
			continue
		}
		if seen[key] {
			jobs = jobs[:len(jobs)-1] // the same source as a block before
			_ = src.Close()
			h.Cleanup()
			continue
		}
		seen[key] = true
		j.row, j.src = row, src
		go func() {
			defer close(j.done)
			defer h.Cleanup()
			defer src.Close()
			ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
			defer cancel()
			start := time.Now()
			tok, err := src.Refresh(ctx)
			j.row.RTTMillis = float64(time.Since(start).Microseconds()) / 1000
			j.row.fill(tok, err)
		}()
	}
	rows := make([]checkRow, 0, len(jobs))
	for _, j := range jobs {
		<-j.done
		rows = append(rows, j.row)
	}
	return rows, secrets
}

// checkInvalidConfig is the result of a block that cannot make a source
// (a placeholder that expands to nothing, an unreadable TLS file).
const checkInvalidConfig = "invalid config"

// checkSource builds the token source of h as Provision would, without a
// shared cache (the check writes nothing to any storage), and the row that
// names it; with the credentials given (a credentials_dir tenant's), else
// with h's values expanded. The caller closes the source and cleans h up.
func (h *Handler) checkSource(given *token.Credentials) (src *token.Source, row checkRow, creds *token.Credentials, key string, timeout time.Duration, err error) {
	h.logger = caddy.Log().Named("desko_auth.check").WithOptions(zap.IncreaseLevel(zap.WarnLevel))
	if err := h.Validate(); err != nil {
		return nil, row, given, "", 0, err
	}
	creds = given
	if creds == nil {
		if creds, err = h.credentialValues().expand(); err != nil {
			return nil, row, nil, "", 0, err
		}
	}
	cfg, tlsFingerprint, err := h.requestConfig()
	if err != nil {
		return nil, row, creds, "", 0, err
	}
	id := h.identity(cfg, h.sharedIdentity(), tlsFingerprint)
	cfg.Credentials = (*token.Static)(creds)
	if src, err = token.New(cfg); err != nil {
		return nil, row, creds, "", 0, err
	}
	row = checkRow{Source: id.label(creds.ClientID), Tenant: h.tenantName, ClientID: creds.ClientID, AuthStyle: cfg.Auth.String()}
	if creds.Key != nil {
		row.KeyID = creds.Key.ID()
	}
	return src, row, creds, id.key(), cfg.Timeout, nil
}

// fill sets the row's result from the token request's outcome.
func (r *checkRow) fill(tok *token.Token, err error) {
	var te *token.Error
	switch {
	case err == nil:
		r.Result = checkOK
		r.Lifetime = time.Until(tok.Expiry()).Round(time.Second).String()
		r.Scopes = tok.Granted()
		return
	case errors.As(err, &te) && te.Kind == token.KindRefused:
		r.Result = checkRefused
	case errors.As(err, &te) && te.Kind == token.KindInvalidAnswer:
		r.Result = checkInvalidAnswer
	case errors.As(err, &te) && te.Kind != token.KindTransient:
		// tls, redirect, dns, connect: the kind says where to look.
		r.Result = te.Kind.String()
	default:
		r.Result = checkUnavailable
	}
	r.Reason = err.Error()
}

// printRows writes the rows as a table or as JSON lines, every line
// scrubbed of the secrets as a last defence.
func printRows(w io.Writer, rows []checkRow, asJSON bool, sc *scrub.Scrubber) error {
	out := &scrubWriter{w: w, sc: sc}
	if asJSON {
		enc := json.NewEncoder(out)
		for _, r := range rows {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return out.err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tTENANT\tCLIENT ID\tSTYLE\tKEY ID\tRESULT\tLIFETIME\tSCOPES\tRTT")
	for _, r := range rows {
		result := r.Result
		if r.Reason != "" {
			result += ": " + r.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0fms\n", orDash(r.Source), orDash(r.Tenant), orDash(r.ClientID), orDash(r.AuthStyle), orDash(r.KeyID), result,
			orDash(r.Lifetime), orDash(r.Scopes), r.RTTMillis)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return out.err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// scrubWriter scrubs what goes through it, a write at a time (the
// encoders and the table write whole lines).
type scrubWriter struct {
	w   io.Writer
	sc  *scrub.Scrubber
	err error
}

func (s *scrubWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if _, err := io.WriteString(s.w, s.sc.Scrub(string(p))); err != nil {
		s.err = err
		return 0, err
	}
	return len(p), nil
}
