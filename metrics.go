package deskoauth

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// The collectors are created once per process and registered into each
// config's registry, so counts survive config reloads. Labels carry only the
// non-secret source label.
var metrics = struct {
	fetches  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	expiry   *prometheus.GaugeVec
	requests *prometheus.CounterVec
	shared   *prometheus.CounterVec
	creds    *prometheus.CounterVec
	tenants  *prometheus.GaugeVec
	starts   *prometheus.CounterVec
	evicts   *prometheus.CounterVec
	// sharedState reads the state of each source's shared cache when
	// scraped.
	sharedState sharedCacheCollector
}{
	fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "token_fetches_total",
		Help:      "Token requests sent to the token endpoint, by result (ok, refused, transient, invalid_answer, tls, redirect, dns, connect).",
	}, []string{"source", "result"}),
	duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "desko_auth",
		Name:      "token_fetch_duration_seconds",
		Help:      "Duration of token requests.",
		Buckets:   []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"source"}),
	expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "desko_auth",
		Name:      "token_expiry_timestamp_seconds",
		Help:      "Unix time at which the token being served expires; 0 when none is held.",
	}, []string{"source"}),
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "requests_total",
		Help:      "Requests handled, by outcome (injected, unavailable, replayed, replay_failed, over_replay_budget, unknown_tenant).",
	}, []string{"source", "outcome"}),
	shared: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "shared_cache_total",
		Help:      "Uses of the shared (cluster) token cache, by result (hit, miss, adopted, lock_timeout, timeout, error).",
	}, []string{"source", "result"}),
	creds: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "credentials_total",
		Help:      "Credentials read again from their files, by result (changed: new ones picked up; unreadable: a file missing, unreadable or empty, the last good ones kept).",
	}, []string{"source", "result"}),
	tenants: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "desko_auth",
		Name:      "tenants",
		Help:      "Live credentials_dir tenants of a block (source is the block's label).",
	}, []string{"source"}),
	starts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "tenant_starts_total",
		Help:      "credentials_dir tenants started on their first request.",
	}, []string{"source"}),
	evicts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "tenant_evictions_total",
		Help:      "credentials_dir tenants released, by reason (idle, max_tenants, removed, unloaded).",
	}, []string{"source", "reason"}),
	sharedState: sharedCacheCollector{
		degraded: prometheus.NewDesc("desko_auth_shared_cache_degraded",
			"1 while the shared token cache is in an outage (tokens are fetched per instance), else 0.", []string{"source"}, nil),
		stuck: prometheus.NewDesc("desko_auth_shared_cache_stuck_calls",
			"Calls to the shared cache's storage that outlived their callers and have not returned.", []string{"source"}, nil),
	},
}

// fetchOK is the result label of a token request that succeeded; the
// others are token.Kind's String forms.
const fetchOK = "ok"

// outcome is what became of a request the handler passed on (or could
// not): the requests_total label.
type outcome uint8

// The outcomes of a request.
const (
	outcomeInjected         outcome = iota // forwarded with the token
	outcomeUnavailable                     // no token could be had: answered here
	outcomeReplayed                        // replayed with a new token after a 401
	outcomeReplayFailed                    // a 401 that a replay could not mend
	outcomeOverReplayBudget                // forwarded, its body too large for the replay memory
	outcomeUnknownTenant                   // its tenant value named no credentials: answered 403
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"injected", "unavailable", "replayed", "replay_failed", "over_replay_budget", "unknown_tenant"}

func (o outcome) String() string { return outcomeNames[o] }

// The results of reading credentials again: the credentials_total label.
const (
	credentialsChanged    = iota // new credentials picked up
	credentialsUnreadable        // a file could not give a credential
	numCredentialResults
)

var credentialResultNames = [numCredentialResults]string{"changed", "unreadable"}

// sourceMetrics holds one source's curried collectors.
type sourceMetrics struct {
	fetches     *prometheus.CounterVec
	duration    prometheus.Observer
	expiry      prometheus.Gauge
	requests    [numOutcomes]prometheus.Counter
	shared      *prometheus.CounterVec
	credentials [numCredentialResults]prometheus.Counter
	tenants     tenantMetrics
}

// tenantMetrics are a tenant block's series.
type tenantMetrics struct {
	live    prometheus.Gauge
	started prometheus.Counter
	evicts  *prometheus.CounterVec
}

// newTenantMetrics returns the series of the tenant block labelled label.
func newTenantMetrics(label string) tenantMetrics {
	return tenantMetrics{
		live:    metrics.tenants.WithLabelValues(label),
		started: metrics.starts.WithLabelValues(label),
		evicts:  metrics.evicts.MustCurryWith(prometheus.Labels{"source": label}),
	}
}

// evicted is the eviction counter for a reason.
func (m tenantMetrics) evicted(why string) prometheus.Counter { return m.evicts.WithLabelValues(why) }

var (
	sourceMetricsMu sync.Mutex
	sourceMetricsBy = map[string]*sourceMetrics{}
)

// registerCollectors registers the collectors into this config's registry
// (every Provision: the registry is per config).
func registerCollectors(ctx caddy.Context) {
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		for _, c := range []prometheus.Collector{metrics.fetches, metrics.duration, metrics.expiry, metrics.requests, metrics.shared,
			metrics.sharedState, metrics.creds, metrics.tenants, metrics.starts, metrics.evicts} {
			if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
				ctx.Logger().Warn("registering metrics") // a programming error; metrics are not vital
			}
		}
	}
}

// metricsFor returns the (process-wide) metrics of the source label.
func metricsFor(label string) *sourceMetrics {
	sourceMetricsMu.Lock()
	defer sourceMetricsMu.Unlock()
	if m, ok := sourceMetricsBy[label]; ok {
		return m
	}
	m := &sourceMetrics{
		fetches:  metrics.fetches.MustCurryWith(prometheus.Labels{"source": label}),
		duration: metrics.duration.WithLabelValues(label),
		expiry:   metrics.expiry.WithLabelValues(label),
		shared:   metrics.shared.MustCurryWith(prometheus.Labels{"source": label}),
	}
	for o := range numOutcomes {
		m.requests[o] = metrics.requests.WithLabelValues(label, o.String())
	}
	for r, name := range credentialResultNames {
		m.credentials[r] = metrics.creds.WithLabelValues(label, name)
	}

	sourceMetricsBy[label] = m
	return m
}

// fetched counts a token request by result.
func (m *sourceMetrics) fetched(result string, took time.Duration) {
	m.fetches.WithLabelValues(result).Inc()
	m.duration.Observe(took.Seconds())
}

// count counts one handled request by outcome.
func (m *sourceMetrics) count(o outcome) { m.requests[o].Inc() }

// sharedCacheCollector reports, when scraped, the state of the shared
// cache of every live source that has one: desko_auth_shared_cache_degraded
// and desko_auth_shared_cache_stuck_calls. Sources that share a label
// (same client ID, token URL and scopes, other settings; or the tenants of
// a credentials_dir, under their block's) are added up: the cache is
// degraded if any is, and their stuck calls are summed.
type sharedCacheCollector struct {
	degraded, stuck *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c sharedCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.degraded
	ch <- c.stuck
}

// Collect implements prometheus.Collector.
func (c sharedCacheCollector) Collect(ch chan<- prometheus.Metric) {
	type state struct{ degraded, stuck float64 }
	var labels []string
	by := map[string]*state{}
	sources.Range(func(_, v any) bool { // every live source, the hidden ones too
		s := v.(*source)
		sc := s.engine.SharedCache()
		if sc == nil {
			return true
		}
		st, ok := by[s.series]
		if !ok {
			st = &state{}
			by[s.series] = st
			labels = append(labels, s.series)
		}
		if sc.State == token.SharedCacheDegraded {
			st.degraded = 1
		}
		st.stuck += float64(sc.StuckCalls)
		return true
	})
	slices.Sort(labels)
	for _, l := range labels {
		ch <- prometheus.MustNewConstMetric(c.degraded, prometheus.GaugeValue, by[l].degraded, l)
		ch <- prometheus.MustNewConstMetric(c.stuck, prometheus.GaugeValue, by[l].stuck, l)
	}
}
