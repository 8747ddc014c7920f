// SPDX-License-Identifier: Apache-2.0

package main

// The kubelet's CRI transport: one grpc-go connection per service (the kubelet's remote runtime
// and remote image services each dial the socket), every call with the kubelet's deadline, and
// one ground-truth line per call made after the measured batch began.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "startprof/cri/runtimev1"
)

const (
	runtimeService = "/runtime.v1.RuntimeService/"
	imageService   = "/runtime.v1.ImageService/"
	// The kubelet raises gRPC's 4 MiB receive limit to 16 MiB (cri-client maxMsgSize).
	maxMsgSize = 16 * 1024 * 1024
	// cri-client's connection parameters.
	baseBackoffDelay     = 100 * time.Millisecond
	maxBackoffDelay      = 3 * time.Second
	minConnectionTimeout = 5 * time.Second
)

// Gives the gRPC status names the way the Python lab driver writes them (grpc.StatusCode names).
var statusNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// callFor names what a call is about, for the ground truth; ids learnt from a reply
// (RunPodSandbox, CreateContainer) are filled in after it.
type callFor struct {
	pod         *pod
	sandboxID   string
	container   string
	containerID string
}

// truthLine is one line of src/startprof/lab/truth.py's format; the field order is TRUTH_KEYS.
type truthLine struct {
	Pod              string `json:"pod"`
	Namespace        string `json:"namespace"`
	UID              string `json:"uid"`
	SandboxID        string `json:"sandbox_id"`
	Container        string `json:"container"`
	ContainerID      string `json:"container_id"`
	Method           string `json:"method"`
	StartMonotonicNs int64  `json:"start_monotonic_ns"`
	EndMonotonicNs   int64  `json:"end_monotonic_ns"`
	StartWallNs      int64  `json:"start_wall_ns"`
	EndWallNs        int64  `json:"end_wall_ns"`
	Status           string `json:"status"`
	Error            string `json:"error"`
}

type traceLine struct {
	Method           string `json:"method"`
	Pod              string `json:"pod"`
	SandboxID        string `json:"sandbox_id"`
	ContainerID      string `json:"container_id"`
	Traceparent      string `json:"traceparent"`
	StartMonotonicNs int64  `json:"start_monotonic_ns"`
}

type client struct {
	runtime *grpc.ClientConn
	image   *grpc.ClientConn
	// runtimeRequestTimeout: the deadline of every call but RunPodSandbox (twice it),
	// StopContainer (plus the grace period) and PullImage (none).
	timeout     time.Duration
	traceparent bool
	truth       *jsonLines
	traceLog    *jsonLines
	// measured is set when the measured batch begins (SIGUSR1): only calls begun after it are
	// ground truth, so a recording started then holds every call the truth names.
	measured atomic.Bool
	calls    atomic.Int64
	recorded atomic.Int64
	// traces holds each pod's trace id: the kubelet's syncPod span is the parent of every
	// CRI client span of that pod's start.
	traces sync.Map
}

// monotonicNs reads CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
func monotonicNs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

func wallNs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// dial connects like cri-client's NewRemoteRuntimeService / NewRemoteImageService: a plain
// unix-socket dialer, authority "localhost", 16 MiB replies, 100 ms..3 s reconnect back-off.
func dial(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	params := grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: minConnectionTimeout}
	params.Backoff.BaseDelay = baseBackoffDelay
	params.Backoff.MaxDelay = maxBackoffDelay
	return grpc.DialContext(ctx, socket,
		grpc.WithInsecure(),
		grpc.WithAuthority("localhost"),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)),
		grpc.WithConnectParams(params),
	)
}

// connect dials both connections and validates them as cri-client does: Version on the
// runtime connection, ImageFsInfo on the image one, both under the dial's own deadline.
func connect(socket string, timeout time.Duration, c *client) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var err error
	if c.runtime, err = dial(ctx, socket); err != nil {
		return fmt.Errorf("dial %s: %v", socket, err)
	}
	if err = c.do(ctx, c.runtime, runtimeService+"Version", &api.VersionRequest{}, &api.VersionResponse{}, callFor{}); err != nil {
		return fmt.Errorf("validate CRI v1 runtime API on %s: %v", socket, err)
	}
	if c.image, err = dial(ctx, socket); err != nil {
		return fmt.Errorf("dial %s: %v", socket, err)
	}
	if err = c.do(ctx, c.image, imageService+"ImageFsInfo", &api.ImageFsInfoRequest{}, &api.ImageFsInfoResponse{}, callFor{}); err != nil {
		return fmt.Errorf("validate CRI v1 image API on %s: %v", socket, err)
	}
	// kuberuntime's manager then asks for the typed version with its own API version.
	return c.rt("Version", &api.VersionRequest{Version: "0.1.0"}, &api.VersionResponse{}, callFor{})
}

func (c *client) close() {
	if c.runtime != nil {
		c.runtime.Close()
	}
	if c.image != nil {
		c.image.Close()
	}
}

// rt calls a RuntimeService method with runtimeRequestTimeout.
func (c *client) rt(method string, req, resp proto.Message, about callFor) error {
	return c.call(c.runtime, c.timeout, runtimeService+method, req, resp, about)
}

// img calls an ImageService method with runtimeRequestTimeout.
func (c *client) img(method string, req, resp proto.Message, about callFor) error {
	return c.call(c.image, c.timeout, imageService+method, req, resp, about)
}

// call sends one unary call; timeout 0 means no deadline (PullImage).
func (c *client) call(conn *grpc.ClientConn, timeout time.Duration, method string, req, resp proto.Message, about callFor) error {
	ctx, cancel := context.WithCancel(context.Background())
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
	}
	defer cancel()
	return c.do(ctx, conn, method, req, resp, about)
}

func (c *client) do(ctx context.Context, conn *grpc.ClientConn, method string, req, resp proto.Message, about callFor) error {
	tp := ""
	if c.traceparent {
		// What the kubelet's otelgrpc client handler injects: a new client span per call, in
		// the trace of the pod's syncPod (a call about no pod gets a trace of its own), sampled.
		tp = newTraceparent(c.traceOf(about.pod))
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", tp)
	}
	measured := c.measured.Load()
	startWall, startMono := wallNs(), monotonicNs()
	err := conn.Invoke(ctx, method, req, resp)
	endMono, endWall := monotonicNs(), wallNs()
	c.calls.Add(1)
	if err == nil {
		learn(resp, &about)
	}
	podName, namespace, uid := "", "", ""
	if about.pod != nil {
		podName, namespace, uid = about.pod.name, labNamespace, about.pod.uid
		if about.sandboxID == "" {
			about.sandboxID = about.pod.sandboxID()
		}
	}
	if c.traceLog != nil {
		c.traceLog.write(traceLine{method, podName, about.sandboxID, about.containerID, tp, startMono})
	}
	if measured && c.truth != nil {
		line := truthLine{
			Pod: podName, Namespace: namespace, UID: uid,
			SandboxID: about.sandboxID, Container: about.container, ContainerID: about.containerID,
			Method:           method,
			StartMonotonicNs: startMono, EndMonotonicNs: endMono,
			StartWallNs: startWall, EndWallNs: endWall,
			Status: "ok",
		}
		if err != nil {
			st := status.Convert(err)
			line.Status = statusNames[st.Code()]
			if line.Status == "" {
				line.Status = fmt.Sprintf("CODE_%d", st.Code())
			}
			line.Error = strings.Join(strings.Fields(st.Message()), " ")
		}
		c.truth.write(line)
		c.recorded.Add(1)
	}
	if err != nil {
		st := status.Convert(err)
		return &callError{method: method, code: st.Code(), message: st.Message()}
	}
	return nil
}

// callError is a failed CRI call with its gRPC status.
type callError struct {
	method  string
	code    codes.Code
	message string
}

func (e *callError) Error() string {
	return fmt.Sprintf("CRI %s failed: %s: %s", e.method[strings.LastIndex(e.method, "/")+1:], statusNames[e.code], e.message)
}

// learn takes the ids a reply creates, so the ground truth of that call carries them.
func learn(resp proto.Message, about *callFor) {
	switch r := resp.(type) {
	case *api.RunPodSandboxResponse:
		about.sandboxID = r.PodSandboxId
	case *api.CreateContainerResponse:
		about.containerID = r.ContainerId
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func (c *client) traceOf(p *pod) string {
	if p == nil {
		return randomHex(16)
	}
	id, _ := c.traces.LoadOrStore(p, randomHex(16))
	return id.(string)
}

func newTraceparent(traceID string) string {
	return "00-" + traceID + "-" + randomHex(8) + "-01"
}

// isNotFound is crierror.IsNotFound: the kubelet ignores NotFound where an object may have
// gone between a list and a status call.
func isNotFound(err error) bool {
	var ce *callError
	return errors.As(err, &ce) && ce.code == codes.NotFound
}
