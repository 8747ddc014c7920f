// SPDX-License-Identifier: Apache-2.0

package main

// The kubelet's polling: the generic PLEG relists every second (pkg/kubelet/pleg/generic.go:
// GetPods = ListPodSandbox with a nil filter, then ListContainers with an empty filter), and
// for every pod whose sandboxes or containers changed updates the pod cache with
// GetPodStatus (kuberuntime_manager.go: ListPodSandbox by pod uid, PodSandboxStatus of each,
// ListContainers by pod uid, ContainerStatus of each). updateRuntimeUp asks Status every 5 s.

import (
	"context"
	"sort"
	"sync"
	"time"

	api "startprof/cri/runtimev1"
)

const (
	relistPeriod        = time.Second
	runtimeStatusPeriod = 5 * time.Second
	podUIDLabel         = "io.kubernetes.pod.uid"
)

type podRecord struct {
	name, namespace string
	states          map[string]string // sandbox or container id -> state
}

type pleg struct {
	c *client
	// The pods this client started, by uid; other pods on the runtime are inspected too
	// (the kubelet inspects every pod it manages) but have no *pod of ours.
	mu       sync.Mutex
	ours     map[string]*pod
	previous map[string]podRecord
	// Pods whose cache update failed are inspected again at the next relist, like
	// podsToReinspect.
	reinspect map[string]bool
}

func newPleg(c *client) *pleg {
	return &pleg{c: c, ours: map[string]*pod{}, previous: map[string]podRecord{}, reinspect: map[string]bool{}}
}

func (g *pleg) track(p *pod) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ours[p.uid] = p
}

func (g *pleg) lookup(uid string) *pod {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ours[uid]
}

// run relists until ctx ends; like wait.Until, the period starts when the last relist ended.
func (g *pleg) run(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		g.relist()
		select {
		case <-ctx.Done():
			return
		case <-time.After(relistPeriod):
		}
	}
}

// runtimeStatus is the kubelet's updateRuntimeUp loop.
func (g *pleg) runtimeStatus(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		_ = g.c.rt("Status", &api.StatusRequest{}, &api.StatusResponse{}, callFor{})
		select {
		case <-ctx.Done():
			return
		case <-time.After(runtimeStatusPeriod):
		}
	}
}

func (g *pleg) relist() {
	c := g.c
	var sandboxes api.ListPodSandboxResponse
	if err := c.rt("ListPodSandbox", &api.ListPodSandboxRequest{}, &sandboxes, callFor{}); err != nil {
		return
	}
	var containers api.ListContainersResponse
	if err := c.rt("ListContainers", &api.ListContainersRequest{Filter: &api.ContainerFilter{}}, &containers, callFor{}); err != nil {
		return
	}
	current := map[string]podRecord{}
	record := func(uid, name, namespace string) podRecord {
		r, ok := current[uid]
		if !ok {
			r = podRecord{name: name, namespace: namespace, states: map[string]string{}}
			current[uid] = r
		}
		return r
	}
	for _, s := range sandboxes.Items {
		if s.Metadata == nil {
			continue
		}
		record(s.Metadata.Uid, s.Metadata.Name, s.Metadata.Namespace).states[s.Id] = s.State.String()
	}
	for _, ct := range containers.Containers {
		uid := ct.Labels[podUIDLabel]
		record(uid, ct.Labels["io.kubernetes.pod.name"], ct.Labels["io.kubernetes.pod.namespace"]).states[ct.Id] = ct.State.String()
	}
	var changed []string
	for uid, r := range current {
		if g.reinspect[uid] || !sameStates(r.states, g.previous[uid].states) {
			changed = append(changed, uid)
		}
	}
	for uid := range g.previous {
		if _, still := current[uid]; !still {
			changed = append(changed, uid)
		}
	}
	sort.Strings(changed)
	reinspect := map[string]bool{}
	for _, uid := range changed {
		r, ok := current[uid]
		if !ok {
			r = g.previous[uid]
		}
		if uid == "" {
			continue // containers without the kubelet's labels belong to no pod
		}
		if err := g.updateCache(uid, r); err != nil {
			reinspect[uid] = true
		}
	}
	g.previous, g.reinspect = current, reinspect
}

func sameStates(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// updateCache is GetPodStatus for one pod; a pod of ours whose app containers all run is
// marked running (what the pod worker learns from the cache).
func (g *pleg) updateCache(uid string, r podRecord) error {
	c := g.c
	p := g.lookup(uid)
	if p == nil {
		p = &pod{name: r.name, uid: uid}
	}
	selector := map[string]string{podUIDLabel: uid}
	var sandboxes api.ListPodSandboxResponse
	if err := c.rt("ListPodSandbox", &api.ListPodSandboxRequest{Filter: &api.PodSandboxFilter{LabelSelector: selector}}, &sandboxes, callFor{pod: p}); err != nil {
		return err
	}
	items := sandboxes.Items
	sort.SliceStable(items, func(i, j int) bool { return items[i].CreatedAt > items[j].CreatedAt })
	for _, s := range items {
		var st api.PodSandboxStatusResponse
		err := c.rt("PodSandboxStatus", &api.PodSandboxStatusRequest{PodSandboxId: s.Id}, &st, callFor{pod: p, sandboxID: s.Id})
		if err != nil && !isNotFound(err) {
			return err
		}
	}
	var containers api.ListContainersResponse
	if err := c.rt("ListContainers", &api.ListContainersRequest{Filter: &api.ContainerFilter{LabelSelector: selector}}, &containers, callFor{pod: p}); err != nil {
		return err
	}
	running := 0
	for _, ct := range containers.Containers {
		name := ""
		if ct.Metadata != nil {
			name = ct.Metadata.Name
		}
		var st api.ContainerStatusResponse
		err := c.rt("ContainerStatus", &api.ContainerStatusRequest{ContainerId: ct.Id}, &st,
			callFor{pod: p, sandboxID: ct.PodSandboxId, container: name, containerID: ct.Id})
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if st.Status != nil && st.Status.State == api.ContainerState_CONTAINER_RUNNING {
			running++
		}
	}
	if p.running != nil && p.want > 0 && running >= p.want {
		p.markRunning()
	}
	return nil
}
