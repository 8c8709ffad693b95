package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// TestLockContention: while A holds the lock, B's Lock fails when its
// deadline passes (not at FileStorage's next 1 s poll) with a deadline
// error that does not say the storage is unresponsive, the source's
// lock_timeout; once A unlocks, B gets it and A is kept out.
func TestLockContention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := bubbleDir(t)
		a := newEntry(t, &certmagic.FileStorage{Path: dir})
		b := newEntry(t, &certmagic.FileStorage{Path: dir})
		ca, cb := testCreds(), testCreds()

		unlockA, err := a.Lock(context.Background(), ca)
		if err != nil {
			t.Fatalf("A Lock: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "locks", sealedFor(t, a, ca).lockName+".lock")); err != nil {
			t.Errorf("no lock file where expected: %v", err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		start := time.Now()
		unlockB, err := b.Lock(ctx, cb)
		took := time.Since(start)
		cancel()
		if err == nil {
			unlockB()
			t.Fatal("B locked while A held the lock")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("B Lock error = %v; want a context deadline error", err)
		}
		if errors.Is(err, token.ErrStoreUnresponsive) {
			t.Errorf("B Lock error = %v; a lock held elsewhere is not an unresponsive storage (the source would count a timeout, not a lock_timeout)", err)
		}
		if took != 50*time.Millisecond {
			t.Errorf("B waited %v with a 50ms deadline", took)
		}
		synctest.Wait() // FileStorage.Lock has seen the deadline and returned
		if b.gate.isStuck() {
			t.Error("B's gate is stuck after its Lock returned")
		}

		unlockA()
		unlockA() // harmless

		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		unlockB, err = b.Lock(ctx, cb)
		if err != nil {
			t.Fatalf("B Lock after A unlocked: %v", err)
		}
		// Now A is the one kept out.
		ctxA, cancelA := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancelA()
		if u, err := a.Lock(ctxA, ca); err == nil {
			u()
			t.Fatal("A locked while B held the lock")
		}
		unlockB()
	})
}

// TestLockHandoff: a waiter that was refused while the holder held the lock
// gets it once the holder releases it, without a new call, at FileStorage's
// next poll (at most 1 s later).
func TestLockHandoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := bubbleDir(t)
		a := newEntry(t, &certmagic.FileStorage{Path: dir})
		refused := make(chan struct{}, 1)
		b := newEntry(t, &probingStorage{FileStorage: &certmagic.FileStorage{Path: dir}, refused: refused})

		unlockA, err := a.Lock(context.Background(), testCreds())
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			unlock func()
			err    error
			at     time.Time
		}
		res := make(chan result, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // a bound, not a wait
		defer cancel()
		go func() {
			u, err := b.Lock(ctx, testCreds())
			res <- result{u, err, time.Now()}
		}()
		select {
		case <-refused: // B tried and was kept out: it is now waiting in Lock
		case r := <-res:
			t.Fatalf("B's Lock returned (%v) while A held the lock", r.err)
		}
		time.Sleep(300 * time.Millisecond) // A holds the lock a while longer
		synctest.Wait()
		select {
		case r := <-res:
			t.Fatalf("B's Lock returned (%v) while A held the lock", r.err)
		default:
		}
		released := time.Now()
		unlockA()
		r := <-res
		if r.err != nil {
			t.Fatalf("B never got the released lock: %v", r.err)
		}
		if d := r.at.Sub(released); d > time.Second {
			t.Errorf("B got the lock %v after A released it; want at most FileStorage's 1s poll", d)
		}
		r.unlock()
	})
}

func TestLockEndedContext(t *testing.T) {
	s := &fakeStorage{}
	e := newEntry(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Lock(ctx, testCreds()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with an ended context = %v; want context.Canceled", err)
	}
	if n := s.lockCalls(); n != 0 {
		t.Fatalf("storage Lock called %d times with an ended context", n)
	}
}

// TestLockBoundWithStubbornStorage: a storage whose Lock ignores ctx cannot
// hold Lock past the deadline, and a lock it grants late is released, not
// leaked; meanwhile the entry does not call the storage again.
func TestLockBoundWithStubbornStorage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &fakeStorage{lockGate: make(chan struct{}), unlocked: make(chan string, 1)}
		e := newEntry(t, s)
		c := testCreds()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := e.Lock(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock = %v; want context.DeadlineExceeded", err)
		}
		if took := time.Since(start); took != 20*time.Millisecond {
			t.Errorf("Lock returned after %v with a 20ms deadline", took)
		}
		if _, err := e.Lock(context.Background(), c); !errors.Is(err, errStuck) || !errors.Is(err, token.ErrStoreUnresponsive) {
			t.Errorf("Lock while the first one is stuck = %v; want errStuck", err)
		}
		if n := s.lockCalls(); n != 1 {
			t.Errorf("storage Lock called %d times, want 1", n)
		}
		close(s.lockGate) // the storage finally grants the lock
		if name := <-s.unlocked; name != sealedFor(t, e, c).lockName {
			t.Fatalf("unlocked %q; want %q", name, sealedFor(t, e, c).lockName)
		}
		synctest.Wait()
		if e.gate.isStuck() {
			t.Error("the gate is still stuck after the late lock was released")
		}
	})
}

func TestLockUnlock(t *testing.T) {
	s := &fakeStorage{unlockErr: errors.New("disk on fire"), unlocked: make(chan string, 2)}
	var (
		mu       sync.Mutex
		reported []error
	)
	e, err := New(s, testTokenURL, testScopes, func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}

	// The caller's context has ended by the time it unlocks.
	ctx, cancel := context.WithCancel(context.Background())
	unlock, err := e.Lock(ctx, testCreds())
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	unlock()
	unlock()
	if len(s.unlocked) != 1 {
		t.Errorf("storage Unlock called %d times; want 1", len(s.unlocked))
	}
	if s.unlockCtxErr != nil {
		t.Errorf("Unlock got an ended context: %v", s.unlockCtxErr)
	}
	if !s.unlockHadDeadline {
		t.Error("Unlock's context has no deadline")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 1 || !strings.Contains(reported[0].Error(), "disk on fire") || !strings.Contains(reported[0].Error(), testKey()) {
		t.Errorf("reported unlock errors = %v", reported)
	} else {
		assertClean(t, "unlock error", reported[0].Error())
	}
}

// TestLockUnlockBounded: unlock returns when Unlock outlives its timeout,
// reporting it; the gate stays stuck (nothing piles up behind the call)
// until the storage answers.
func TestLockUnlockBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &stubbornUnlockStorage{release: make(chan struct{})}
		var reported, other []error
		var mu sync.Mutex
		e, err := New(s, testTokenURL, testScopes, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), testKey()) {
				reported = append(reported, err)
			} else {
				other = append(other, err)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		e.unlockTimeout = 50 * time.Millisecond
		unlock, err := e.Lock(context.Background(), testCreds())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		unlock()
		if took := time.Since(start); took != e.unlockTimeout {
			t.Errorf("unlock with a hanging Unlock returned after %v; want its %v timeout", took, e.unlockTimeout)
		}
		mu.Lock()
		if len(reported) != 1 || len(other) != 0 {
			t.Errorf("unlock failures reported: %v (and %v); want 1, a deadline naming the key", reported, other)
		}
		mu.Unlock()
		if !e.gate.isStuck() {
			t.Error("the abandoned Unlock is not recorded as stuck")
		}
		if _, err := e.Load(context.Background(), testCreds()); !errors.Is(err, errStuck) {
			t.Errorf("Load while Unlock is stuck = %v; want errStuck", err)
		}
		close(s.release)
		synctest.Wait()
		if e.gate.isStuck() {
			t.Error("the gate is still stuck after Unlock returned")
		}
		if n := s.unlocks.Load(); n != 1 {
			t.Errorf("Unlock returned %d times, want 1", n)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reported) != 1 || len(other) != 0 {
			t.Errorf("unlock failures reported after Unlock returned: %v (and %v); want still 1", reported, other)
		}
	})
}
