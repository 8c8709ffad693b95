package deskoauth

import "time"

// rejectBudget is a token bucket over the token requests that upstream 401s
// cause for one credential set: rejectBurst at once, then one per
// rejectRefill. Its zero value is a full bucket. The engine's mutex guards
// it; it reads no clock of its own.
type rejectBudget struct {
	spent float64   // tokens taken and not yet refilled
	last  time.Time // when spent was last brought up to date
	dry   bool      // the bucket ran dry and has not been full since
}

// take spends one request from the budget at now. ok reports whether there
// was one; firstDry is true for the first refusal since the bucket was last
// full, so that a dry spell is logged once.
func (b *rejectBudget) take(now time.Time) (ok, firstDry bool) {
	b.refill(now)
	if b.spent <= rejectBurst-1 {
		b.spent++
		return true, false
	}
	firstDry = !b.dry
	b.dry = true
	return false, firstDry
}

// refund gives back a request that turned out to cost none.
func (b *rejectBudget) refund() { b.spent = max(b.spent-1, 0) }

func (b *rejectBudget) refill(now time.Time) {
	if !b.last.IsZero() {
		b.spent = max(b.spent-float64(now.Sub(b.last))/float64(rejectRefill), 0)
	}
	b.last = now
	if b.spent == 0 {
		b.dry = false // full again: the dry spell is over
	}
}
