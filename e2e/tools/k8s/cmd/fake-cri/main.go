// Command fake-cri serves an in-memory container runtime (the CRI's runtime
// and image services from k8s.io/cri-client/pkg/fake) on a unix socket, so
// that a real kubelet can run on an e2e node that has no container runtime.
// Pods "run" only as records in this process: the kubelet registers, syncs
// static and scheduled pods, reports them Running and Ready, and serves
// :10250, while no container process exists.
//
// One correction to the fake: its ContainerStatus reports no log path. The
// kubelet's container log manager removes `<logPath>*` when it garbage
// collects a container, so an empty path globs the kubelet's working
// directory — run from /, that deleted the host's /bin symlink. Every
// container's status here carries the absolute log path the kubelet asked
// for (sandbox log directory + container log path), or a path under a
// directory that never exists.
//
// Limits of the fake, which the e2e suite works around: every pod gets the
// same IP, logs/exec/attach are not served, HTTP probes reach nothing (exec
// probes succeed), and the runtime's state is lost when this process
// restarts (the kubelet then recreates its pods).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

// noLogDir never exists: a log path there matches no file.
const noLogDir = "/var/log/pods/.fake-cri-no-such-dir"

type runtime struct {
	*fake.RemoteRuntime
	mu       sync.Mutex
	logPaths map[string]string // container ID -> absolute log path
}

func (r *runtime) CreateContainer(ctx context.Context, req *kubeapi.CreateContainerRequest) (*kubeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(noLogDir, resp.ContainerId+".log")
	if dir, rel := req.GetSandboxConfig().GetLogDirectory(), req.GetConfig().GetLogPath(); filepath.IsAbs(dir) && rel != "" {
		p = filepath.Join(dir, rel)
	}
	r.mu.Lock()
	r.logPaths[resp.ContainerId] = p
	r.mu.Unlock()
	return resp, nil
}

func (r *runtime) ContainerStatus(ctx context.Context, req *kubeapi.ContainerStatusRequest) (*kubeapi.ContainerStatusResponse, error) {
	resp, err := r.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil || resp.GetStatus() == nil {
		return resp, err
	}
	r.mu.Lock()
	p, ok := r.logPaths[req.ContainerId]
	r.mu.Unlock()
	if !ok {
		p = filepath.Join(noLogDir, req.ContainerId+".log")
	}
	resp.Status.LogPath = p
	return resp, nil
}

func (r *runtime) RemoveContainer(ctx context.Context, req *kubeapi.RemoveContainerRequest) (*kubeapi.RemoveContainerResponse, error) {
	resp, err := r.RemoteRuntime.RemoveContainer(ctx, req)
	if err == nil {
		r.mu.Lock()
		delete(r.logPaths, req.ContainerId)
		r.mu.Unlock()
	}
	return resp, err
}

func main() {
	endpoint := flag.String("endpoint", "", "unix socket to serve the CRI on (unix:///path)")
	imageSize := flag.Uint64("image-size", 1<<20, "size reported for every image; the kubelet refuses images without one")
	flag.Parse()
	if *endpoint == "" {
		fmt.Fprintln(os.Stderr, "fake-cri: --endpoint is required")
		os.Exit(2)
	}
	rt := &runtime{RemoteRuntime: fake.NewFakeRemoteRuntime(), logPaths: map[string]string{}}
	// Without a size the kubelet fails every pod with "Id or size of image
	// is not set" (ImageInspectError).
	rt.ImageService.SetFakeImageSize(*imageSize)
	// Runtime and network ready, as fake.RemoteRuntime.Start sets them.
	rt.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	srv := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(srv, rt)
	kubeapi.RegisterImageServiceServer(srv, rt)
	ln, err := util.CreateListener(*endpoint)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-cri: listen on %s: %v\n", *endpoint, err)
		os.Exit(1)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Stop()
	}()
	fmt.Fprintf(os.Stderr, "fake-cri: serving %s\n", *endpoint)
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintf(os.Stderr, "fake-cri: %v\n", err)
		os.Exit(1)
	}
}
