package token

// The in-process flight: one refresh per Source at a time, that any number
// of callers wait for.

import "sync"

// flight runs one function at a time: a caller that arrives while it runs
// joins the running call instead of starting another, as
// golang.org/x/sync/singleflight does for a single key. It knows nothing of
// tokens.
type flight[T any] struct {
	mu     sync.Mutex // guards closed, cur and again
	closed bool       // no call starts any more
	cur    *call[T]   // the running call, nil if none
	again  bool       // run cur's function once more if cur succeeds
	wg     sync.WaitGroup
}

// call is one run of a flight's function.
type call[T any] struct {
	done chan struct{} // closed when val and err are set
	// val and err are written once, before done is closed: read them only
	// after <-done.
	val T
	err error
}

// do returns the running call, or starts fn in a new one. It returns nil
// after close.
func (f *flight[T]) do(fn func() (T, error)) *call[T] {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return nil
	case f.cur != nil:
		return f.cur
	}
	return f.startLocked(fn)
}

// rerun reports that what the running call read may have changed: it runs
// fn once more after that call succeeds. With no call running, it starts fn
// if start is set.
func (f *flight[T]) rerun(fn func() (T, error), start bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
	case f.cur != nil:
		f.again = true
	case start:
		f.startLocked(fn)
	}
}

func (f *flight[T]) startLocked(fn func() (T, error)) *call[T] {
	c := &call[T]{done: make(chan struct{})}
	f.cur, f.again = c, false
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		c.val, c.err = fn()
		f.mu.Lock()
		f.cur = nil
		if f.again && !f.closed && c.err == nil {
			f.startLocked(fn)
		}
		f.mu.Unlock()
		close(c.done)
	}()
	return c
}

// close stops new calls from starting; wait waits for the running ones.
func (f *flight[T]) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

func (f *flight[T]) wait() { f.wg.Wait() }

// closeIdle closes f if no call runs, and reports whether it did: a Map
// evicts a Source only then, so that eviction never cuts a fetch short.
func (f *flight[T]) closeIdle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		return false
	}
	f.closed = true
	return true
}
