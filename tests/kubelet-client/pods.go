// SPDX-License-Identifier: Apache-2.0

package main

// Pods as the kubelet starts and stops them: SyncPod's order (kuberuntime_manager.go) and
// startContainer's (kuberuntime_container.go), with the configs of the lab's Python driver
// (src/startprof/lab/driver.py: sandbox_config, container_config); keep the two in sync.

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	api "startprof/cri/runtimev1"
)

const (
	labNamespace = "startprof" // lab/driver.py NAMESPACE
	labCgroup    = "startprof-lab"
)

type podContainer struct {
	name string
	id   string
}

type pod struct {
	name   string
	uid    string
	config *api.PodSandboxConfig
	want   int // app containers

	mu         sync.Mutex
	sandbox    string
	containers []podContainer
	err        error
	startNs    int64 // RunPodSandbox start to the last StartContainer reply
	running    chan struct{}
	onceUp     sync.Once
}

func (p *pod) sandboxID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sandbox
}

func (p *pod) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *pod) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *pod) markRunning() { p.onceUp.Do(func() { close(p.running) }) }

func newUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4, like the Python driver's uuid4
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func newPod(name, runID, logRoot string, want int) *pod {
	uid := newUID()
	seccomp := &api.SecurityProfile{ProfileType: api.SecurityProfile_Unconfined}
	return &pod{
		name: name, uid: uid, want: want, running: make(chan struct{}),
		config: &api.PodSandboxConfig{
			Metadata:     &api.PodSandboxMetadata{Name: name, Uid: uid, Namespace: labNamespace},
			Hostname:     name,
			LogDirectory: filepath.Join(logRoot, fmt.Sprintf("%s_%s_%s", labNamespace, name, uid)),
			DnsConfig:    &api.DNSConfig{},
			Labels: map[string]string{
				"io.kubernetes.pod.name":      name,
				"io.kubernetes.pod.namespace": labNamespace,
				"io.kubernetes.pod.uid":       uid,
				"startprof.lab/run":           runID,
			},
			Annotations: map[string]string{
				"kubernetes.io/config.seen":   time.Now().UTC().Format("2006-01-02T15:04:05Z"),
				"kubernetes.io/config.source": "api",
			},
			Linux: &api.LinuxPodSandboxConfig{
				CgroupParent: fmt.Sprintf("/%s/pod%s", labCgroup, uid),
				SecurityContext: &api.LinuxSandboxSecurityContext{
					NamespaceOptions: podNamespaces(),
					Seccomp:          seccomp,
				},
			},
		},
	}
}

func podNamespaces() *api.NamespaceOption {
	return &api.NamespaceOption{
		Network: api.NamespaceMode_POD, Pid: api.NamespaceMode_CONTAINER, Ipc: api.NamespaceMode_POD,
	}
}

// containerConfig is lab/driver.py's container_config for an app container, except for the
// image: like generateContainerConfig, the image is the reference ImageStatus resolved (the
// image id) and the name the pod asked for goes in user_specified_image.
func containerConfig(p *pod, name, imageRef, image string) *api.ContainerConfig {
	return &api.ContainerConfig{
		Metadata: &api.ContainerMetadata{Name: name},
		Image:    &api.ImageSpec{Image: imageRef, UserSpecifiedImage: image},
		Envs:     []*api.KeyValue{{Key: "STARTPROF_POD", Value: []byte(p.name)}},
		Labels: map[string]string{
			"io.kubernetes.container.name": name,
			"io.kubernetes.pod.name":       p.name,
			"io.kubernetes.pod.namespace":  labNamespace,
			"io.kubernetes.pod.uid":        p.uid,
		},
		Annotations: map[string]string{
			"io.kubernetes.container.restartCount":           "0",
			"io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
		},
		LogPath: name + "/0.log",
		Linux: &api.LinuxContainerConfig{
			Resources: &api.LinuxContainerResources{CpuPeriod: 100000, CpuShares: 2, OomScoreAdj: 1000},
			SecurityContext: &api.LinuxContainerSecurityContext{
				NamespaceOptions: podNamespaces(),
				Seccomp:          &api.SecurityProfile{ProfileType: api.SecurityProfile_Unconfined},
				MaskedPaths:      []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
				ReadonlyPaths:    []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			},
		},
	}
}

// starter holds what every pod worker shares.
type starter struct {
	c       *client
	handler string
	image   string
	grace   int64
	// The kubelet's serialized image puller (serializeImagePulls, the default): one PullImage
	// at a time.
	pullMu sync.Mutex
}

// syncPod starts one new pod the way kubeGenericRuntimeManager.SyncPod does: createPodSandbox
// (RunPodSandbox with twice the request timeout), PodSandboxStatus, then per container
// startContainer: EnsureImageExists (ImageStatus, PullImage only when missing),
// generateContainerConfig's getImageUser (ImageStatus again), CreateContainer, StartContainer.
func (s *starter) syncPod(p *pod) {
	c := s.c
	start := monotonicNs()
	// The kubelet makes the pod's log directory before RunPodSandbox.
	if err := os.MkdirAll(p.config.LogDirectory, 0o755); err != nil {
		p.setErr(err)
		return
	}
	var run api.RunPodSandboxResponse
	req := &api.RunPodSandboxRequest{Config: p.config, RuntimeHandler: s.handler}
	if err := c.call(c.runtime, 2*c.timeout, runtimeService+"RunPodSandbox", req, &run, callFor{pod: p}); err != nil {
		p.setErr(err)
		return
	}
	if run.PodSandboxId == "" {
		p.setErr(errors.New("RunPodSandbox returned no sandbox id"))
		return
	}
	p.mu.Lock()
	p.sandbox = run.PodSandboxId
	p.mu.Unlock()
	sid := run.PodSandboxId
	var st api.PodSandboxStatusResponse
	if err := c.rt("PodSandboxStatus", &api.PodSandboxStatusRequest{PodSandboxId: sid}, &st, callFor{pod: p}); err != nil {
		p.setErr(err)
		return
	}
	if st.Status == nil {
		p.setErr(errors.New("pod sandbox status is nil"))
		return
	}
	for i := 0; i < p.want; i++ {
		name := fmt.Sprintf("app-%d", i)
		if err := s.startContainer(p, sid, name); err != nil {
			p.setErr(err)
			return
		}
	}
	p.mu.Lock()
	p.startNs = monotonicNs() - start
	p.mu.Unlock()
}

func (s *starter) startContainer(p *pod, sid, name string) error {
	c := s.c
	ref, err := s.ensureImage(p)
	if err != nil {
		return err
	}
	var user api.ImageStatusResponse
	if err := c.img("ImageStatus", &api.ImageStatusRequest{Image: &api.ImageSpec{Image: s.image}}, &user, callFor{pod: p}); err != nil {
		return err
	}
	var created api.CreateContainerResponse
	create := &api.CreateContainerRequest{
		PodSandboxId: sid, Config: containerConfig(p, name, ref, s.image), SandboxConfig: p.config,
	}
	if err := c.rt("CreateContainer", create, &created, callFor{pod: p, container: name}); err != nil {
		return err
	}
	if created.ContainerId == "" {
		return errors.New("CreateContainer returned no container id")
	}
	cid := created.ContainerId
	p.mu.Lock()
	p.containers = append(p.containers, podContainer{name, cid})
	p.mu.Unlock()
	return c.rt("StartContainer", &api.StartContainerRequest{ContainerId: cid}, &api.StartContainerResponse{},
		callFor{pod: p, container: name, containerID: cid})
}

// ensureImage is the image manager's IfNotPresent path; it returns the image reference.
func (s *starter) ensureImage(p *pod) (string, error) {
	c := s.c
	var st api.ImageStatusResponse
	if err := c.img("ImageStatus", &api.ImageStatusRequest{Image: &api.ImageSpec{Image: s.image}}, &st, callFor{pod: p}); err != nil {
		return "", err
	}
	if st.Image != nil && st.Image.Id != "" {
		return st.Image.Id, nil
	}
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	var pulled api.PullImageResponse
	req := &api.PullImageRequest{Image: &api.ImageSpec{Image: s.image}, SandboxConfig: p.config}
	// remote_image.go PullImage: no deadline, only a cancel.
	if err := c.call(c.image, 0, imageService+"PullImage", req, &pulled, callFor{pod: p}); err != nil {
		return "", err
	}
	if pulled.ImageRef == "" {
		return "", fmt.Errorf("imageRef of image %q is not set", s.image)
	}
	return pulled.ImageRef, nil
}

// teardown kills and removes one pod, leaving nothing behind: StopContainer (request timeout
// plus grace, as remote_runtime.go), RemoveContainer (last container first), StopPodSandbox,
// RemovePodSandbox, then the pod's cgroups and log directory. NotFound counts as done, as in
// the kubelet.
func (s *starter) teardown(p *pod) {
	c := s.c
	sid := p.sandboxID()
	p.mu.Lock()
	containers := append([]podContainer(nil), p.containers...)
	p.mu.Unlock()
	if sid != "" {
		for i := len(containers) - 1; i >= 0; i-- {
			ct := containers[i]
			about := callFor{pod: p, container: ct.name, containerID: ct.id}
			stop := &api.StopContainerRequest{ContainerId: ct.id, Timeout: s.grace}
			timeout := c.timeout + time.Duration(s.grace)*time.Second
			if err := c.call(c.runtime, timeout, runtimeService+"StopContainer", stop, &api.StopContainerResponse{}, about); err != nil && !isNotFound(err) {
				p.setErr(fmt.Errorf("tear-down: %v", err))
			}
			if err := c.rt("RemoveContainer", &api.RemoveContainerRequest{ContainerId: ct.id}, &api.RemoveContainerResponse{}, about); err != nil && !isNotFound(err) {
				p.setErr(fmt.Errorf("tear-down: %v", err))
			}
		}
		if err := c.rt("StopPodSandbox", &api.StopPodSandboxRequest{PodSandboxId: sid}, &api.StopPodSandboxResponse{}, callFor{pod: p}); err != nil && !isNotFound(err) {
			p.setErr(fmt.Errorf("tear-down: %v", err))
		}
		if err := c.rt("RemovePodSandbox", &api.RemovePodSandboxRequest{PodSandboxId: sid}, &api.RemovePodSandboxResponse{}, callFor{pod: p}); err != nil && !isNotFound(err) {
			p.setErr(fmt.Errorf("tear-down: %v", err))
		}
	}
	if left := removePodCgroups(p.config.Linux.CgroupParent); len(left) > 0 {
		p.setErr(fmt.Errorf("pod cgroups not removed: %s", strings.Join(left, "; ")))
	}
	os.RemoveAll(p.config.LogDirectory)
}

// forEach runs fn on every pod, concurrency at a time: the kubelet's pod workers.
func forEach(pods []*pod, concurrency int, stop <-chan struct{}, fn func(*pod)) {
	work := make(chan *pod)
	var wg sync.WaitGroup
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				fn(p)
			}
		}()
	}
	for _, p := range pods {
		select {
		case <-stop:
		case work <- p:
			continue
		}
		break
	}
	close(work)
	wg.Wait()
}

// removePodCgroups is lab/host.py remove_pod_cgroups: rmdir the pod's cgroup parent in every
// cgroup v1 hierarchy and the cgroup2 one, deepest first; returns what stays.
func removePodCgroups(parent string) []string {
	var left []string
	for _, mp := range cgroupMountpoints() {
		left = append(left, rmdirCgroupTree(filepath.Join(mp, strings.TrimLeft(parent, "/")))...)
	}
	return left
}

func cgroupMountpoints() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		left, right, ok := strings.Cut(line, " - ")
		fields, rfields := strings.Fields(left), strings.Fields(right)
		if !ok || len(fields) < 5 || len(rfields) < 3 {
			continue
		}
		if rfields[0] != "cgroup" && rfields[0] != "cgroup2" {
			continue
		}
		mp := unescapeMount(fields[4])
		if !seen[mp] {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// rmdirCgroupTree removes a cgroup and its children, deepest first. A cgroup whose last
// process just exited can answer EBUSY for a few milliseconds, so each rmdir is retried briefly.
func rmdirCgroupTree(path string) []string {
	var dirs []string
	filepath.Walk(path, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.SliceStable(dirs, func(i, j int) bool {
		return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/")
	})
	var left []string
	for _, d := range dirs {
		for i := 0; i < 50; i++ {
			err := unix.Rmdir(d)
			if err == nil || err == unix.ENOENT {
				break
			}
			if err != unix.EBUSY || i == 49 {
				left = append(left, fmt.Sprintf("%s: %v", d, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return left
}
