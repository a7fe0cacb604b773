package worker

// Unacked is how many outcomes the worker holds that no dispatcher has
// acknowledged yet, for the tests of package worker_test.
func (w *Worker) Unacked() int { return len(w.client.Unacked()) }
