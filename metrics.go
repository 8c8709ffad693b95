package deskoauth

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
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
}{
	fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "token_fetches_total",
		Help:      "Token requests sent to the token endpoint, by result (ok, rejected, transient, invalid_response).",
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
		Help:      "Requests handled, by outcome (injected, unavailable, replayed, replay_failed, over_replay_budget).",
	}, []string{"source", "outcome"}),
	shared: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "desko_auth",
		Name:      "shared_cache_total",
		Help:      "Uses of the shared (cluster) token cache, by result (hit, miss, adopted, lock_timeout, timeout, error).",
	}, []string{"source", "result"}),
}

// sourceMetrics holds one source's curried collectors; it is the engine's
// observer and the handler's request counter.
type sourceMetrics struct {
	fetches  *prometheus.CounterVec
	duration prometheus.Observer
	expiry   prometheus.Gauge
	requests map[string]prometheus.Counter
	injected prometheus.Counter // requests["injected"], for the hot path
	shared   *prometheus.CounterVec
}

var (
	sourceMetricsMu sync.Mutex
	sourceMetricsBy = map[string]*sourceMetrics{}
)

// registerMetrics registers the collectors into this config's registry
// (every Provision: the registry is per config) and returns the source's
// metrics.
func registerMetrics(ctx caddy.Context, label string) *sourceMetrics {
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		for _, c := range []prometheus.Collector{metrics.fetches, metrics.duration, metrics.expiry, metrics.requests, metrics.shared} {
			if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
				ctx.Logger().Warn("registering metrics") // a programming error; metrics are not vital
			}
		}
	}
	return metricsFor(label)
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
		requests: map[string]prometheus.Counter{},
		shared:   metrics.shared.MustCurryWith(prometheus.Labels{"source": label}),
	}
	for _, o := range []string{"injected", "unavailable", "replayed", "replay_failed", "over_replay_budget"} {
		m.requests[o] = metrics.requests.WithLabelValues(label, o)
	}
	m.injected = m.requests["injected"]
	sourceMetricsBy[label] = m
	return m
}

// FetchDone implements Observer.
func (m *sourceMetrics) FetchDone(result string, took time.Duration) {
	m.fetches.WithLabelValues(result).Inc()
	m.duration.Observe(took.Seconds())
}

// TokenChanged implements Observer.
func (m *sourceMetrics) TokenChanged(expiry time.Time) {
	if expiry.IsZero() {
		m.expiry.Set(0)
		return
	}
	m.expiry.Set(float64(expiry.Unix()))
}

// SharedCache implements Observer.
func (m *sourceMetrics) SharedCache(result string) {
	m.shared.WithLabelValues(result).Inc()
}

// request counts one handled request by outcome.
func (m *sourceMetrics) request(outcome string) {
	if outcome == "injected" { // the hot path: no map lookup
		m.injected.Inc()
		return
	}
	m.requests[outcome].Inc()
}
