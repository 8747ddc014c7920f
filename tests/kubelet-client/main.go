// SPDX-License-Identifier: Apache-2.0

// kubelet-client starts pods on a CRI socket over the kubelet's transport: grpc-go, two
// long-lived connections (runtime and image service), the kubelet's deadlines, a PLEG relist
// every second, and pods started by parallel pod workers in SyncPod's order. It exists so that
// startprof's tests can record a CRI connection that is older than the recording, as on a node.
// See docs/kubelet-client.md.
//
// Usage:
//
//	kubelet-client --lab-dir DIR [--pods N] [--concurrency C] [--age-pods K --age-seconds S]
//	               [--truth FILE] [--traceparent --trace-log FILE] [--keep]
//
// With aging (K > 0 or S > 0, or --wait-sigusr1) it first starts and removes K pods, polls
// S seconds, prints "aged" on stdout and waits for SIGUSR1; ground truth covers the calls
// begun after that signal. Exit 0 when every pod started and was removed, 1 when one failed,
// 2 for bad flags; one line on stderr says why.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	labDir, startprof, socket, image, handler, logRoot string
	pods, concurrency, containers, agePods             int
	ageSeconds, timeout, runningTimeout                time.Duration
	grace                                              int64
	wait, keep, traceparent                            bool
	truth, traceLog                                    string
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-client: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("kubelet-client", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&o.labDir, "lab-dir", "", "lab directory: socket, app image, handlers and log root from `startprof lab status --json`")
	fs.StringVar(&o.startprof, "startprof", "startprof", "the startprof command used with --lab-dir")
	fs.StringVar(&o.socket, "socket", "", "CRI socket (overrides the lab's)")
	fs.StringVar(&o.image, "image", "", "app image (overrides the lab's)")
	fs.StringVar(&o.handler, "runtime-handler", "runc-bridge", "CRI runtime handler")
	fs.StringVar(&o.logRoot, "log-root", "", "parent of the pods' log directories [DIR/pods]")
	fs.IntVar(&o.pods, "pods", 1, "pods in the measured batch")
	fs.IntVar(&o.concurrency, "concurrency", 5, "pod workers")
	fs.IntVar(&o.containers, "containers", 1, "app containers per pod")
	fs.IntVar(&o.agePods, "age-pods", 0, "pods started and removed before the batch")
	fs.DurationVar(&o.ageSeconds, "age-seconds", 0, "polling before the batch, after the aging pods (a number of seconds or a Go duration)")
	fs.BoolVar(&o.wait, "wait-sigusr1", false, "print \"aged\" and wait for SIGUSR1 before the batch even without aging")
	fs.DurationVar(&o.timeout, "runtime-request-timeout", 2*time.Minute, "the kubelet's runtimeRequestTimeout")
	fs.Int64Var(&o.grace, "grace-seconds", 30, "StopContainer grace period (terminationGracePeriodSeconds)")
	fs.DurationVar(&o.runningTimeout, "running-timeout", time.Minute, "how long a pod may take to be seen running")
	fs.BoolVar(&o.keep, "keep", false, "leave the batch's pods running")
	fs.StringVar(&o.truth, "truth", "", "ground truth, one JSON line per CRI call of the measured batch (lab/truth.py format)")
	fs.BoolVar(&o.traceparent, "traceparent", false, "send a W3C traceparent with every call, as the kubelet with tracing on")
	fs.StringVar(&o.traceLog, "trace-log", "", "one JSON line per call with its traceparent")
	// --age-seconds also takes a bare number of seconds.
	for i, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok && strings.TrimLeft(k, "-") == "age-seconds" && isNumber(v) {
			args[i] = k + "=" + v + "s"
		} else if strings.TrimLeft(a, "-") == "age-seconds" && i+1 < len(args) && isNumber(args[i+1]) {
			args[i+1] += "s"
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, usageError{"unexpected argument " + fs.Arg(0)}
	}
	switch {
	case o.pods < 1, o.concurrency < 1, o.containers < 1, o.agePods < 0, o.ageSeconds < 0:
		return nil, usageError{"--pods, --concurrency and --containers must be at least 1, --age-pods and --age-seconds at least 0"}
	case o.traceLog != "" && !o.traceparent:
		return nil, usageError{"--trace-log needs --traceparent"}
	}
	if o.labDir != "" {
		if err := o.fromLab(); err != nil {
			return nil, err
		}
	}
	if o.socket == "" || o.image == "" || o.logRoot == "" {
		return nil, usageError{"give --lab-dir, or --socket, --image and --log-root"}
	}
	return o, nil
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && r != '.' {
			return false
		}
	}
	return true
}

// fromLab fills what the flags left out from `startprof lab status --json`.
func (o *options) fromLab() error {
	argv := append(strings.Fields(o.startprof), "lab", "status", "--json", "--dir", o.labDir)
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	var status struct {
		Up       bool     `json:"up"`
		Dir      string   `json:"dir"`
		Socket   string   `json:"socket"`
		Handlers []string `json:"handlers"`
		Images   []string `json:"images"`
	}
	if jerr := json.Unmarshal(out, &status); jerr != nil {
		return fmt.Errorf("%s: no lab status (%v %v)", strings.Join(argv, " "), err, jerr)
	}
	if !status.Up {
		return fmt.Errorf("the lab in %s is not up (sudo startprof lab up)", o.labDir)
	}
	if o.socket == "" {
		o.socket = status.Socket
	}
	if o.logRoot == "" {
		o.logRoot = status.Dir + "/pods"
	}
	if o.image == "" {
		for _, im := range status.Images {
			if strings.Contains(im, "/lab/app:") {
				o.image = im
			}
		}
	}
	known := false
	for _, h := range status.Handlers {
		known = known || h == o.handler
	}
	if !known {
		return usageError{fmt.Sprintf("unknown runtime handler %q; valid: %s", o.handler, strings.Join(status.Handlers, ", "))}
	}
	return nil
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	// Before anything else, so a SIGUSR1 is never the default action (exit).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	stop := make(chan struct{})
	interrupt := make(chan os.Signal, 1)
	signal.Notify(interrupt, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-interrupt
		close(stop)
	}()

	c := &client{timeout: o.timeout, traceparent: o.traceparent}
	if o.truth != "" {
		if c.truth, err = openJSONLines(o.truth); err != nil {
			return err
		}
		defer c.truth.close()
	}
	if o.traceLog != "" {
		if c.traceLog, err = openJSONLines(o.traceLog); err != nil {
			return err
		}
		defer c.traceLog.close()
	}
	aging := o.agePods > 0 || o.ageSeconds > 0 || o.wait
	// Without aging the batch is all there is: every call is ground truth.
	c.measured.Store(!aging)
	if err := connect(o.socket, o.timeout, c); err != nil {
		return err
	}
	defer c.close()

	g := newPleg(c)
	ctx, cancel := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	loops.Add(2)
	go g.run(ctx, &loops)
	go g.runtimeStatus(ctx, &loops)
	defer func() {
		cancel()
		loops.Wait()
	}()

	s := &starter{c: c, handler: o.handler, image: o.image, grace: o.grace}
	runID := newUID()[:6]
	if o.agePods > 0 {
		aged := makePods(g, o, fmt.Sprintf("kc-%s-age", runID), o.agePods)
		if err := batch(s, g, o, aged, stop, false); err != nil {
			return fmt.Errorf("aging: %v", err)
		}
	}
	if aging {
		select {
		case <-stop:
			return errors.New("interrupted while aging")
		case <-time.After(o.ageSeconds):
		}
		fmt.Println("aged")
		select {
		case <-stop:
			return errors.New("interrupted while waiting for SIGUSR1")
		case <-usr1:
		}
		c.measured.Store(true)
	}
	pods := makePods(g, o, "kc-"+runID, o.pods)
	if err := batch(s, g, o, pods, stop, o.keep); err != nil {
		return err
	}
	summary(c, pods)
	return nil
}

func makePods(g *pleg, o *options, prefix string, n int) []*pod {
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = newPod(fmt.Sprintf("%s-%03d", prefix, i), prefix, o.logRoot, o.containers)
		g.track(pods[i])
	}
	return pods
}

// batch starts pods, waits until the PLEG has seen each one running, and (unless keep) tears
// every pod down; it returns the first pod's failure.
func batch(s *starter, g *pleg, o *options, pods []*pod, stop <-chan struct{}, keep bool) error {
	forEach(pods, o.concurrency, stop, s.syncPod)
	deadline := time.After(o.runningTimeout)
	for _, p := range pods {
		if p.failure() != nil || p.sandboxID() == "" {
			continue
		}
		select {
		case <-p.running:
		case <-stop:
			p.setErr(errors.New("interrupted"))
		case <-deadline:
			p.setErr(fmt.Errorf("not seen running after %s", o.runningTimeout))
		}
	}
	if !keep {
		forEach(pods, o.concurrency, nil, s.teardown)
	}
	failed, first := 0, ""
	for _, p := range pods {
		if err := p.failure(); err != nil {
			if failed == 0 {
				first = fmt.Sprintf("%s: %v", p.name, err)
			}
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pod(s) failed; first: %s", failed, len(pods), first)
	}
	return nil
}

func summary(c *client, pods []*pod) {
	var starts []float64
	for _, p := range pods {
		p.mu.Lock()
		if p.err == nil && p.startNs > 0 {
			starts = append(starts, float64(p.startNs)/1e6)
		}
		p.mu.Unlock()
	}
	sort.Float64s(starts)
	median := 0.0
	if len(starts) > 0 {
		median = starts[len(starts)/2]
	}
	fmt.Fprintf(os.Stderr, "kubelet-client: %d of %d pod(s) started (median %.1f ms RunPodSandbox to last StartContainer); %d CRI calls, %d in the ground truth\n",
		len(starts), len(pods), median, c.calls.Load(), c.recorded.Load())
}

// jsonLines appends one JSON document per line, flushed per line, from any goroutine.
type jsonLines struct {
	mu sync.Mutex
	f  *os.File
}

func openJSONLines(path string) (*jsonLines, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &jsonLines{f: f}, nil
}

func (j *jsonLines) write(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.f.Write(append(b, '\n'))
}

func (j *jsonLines) close() { j.f.Close() }
