package main

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The pod lifecycle as kubelet drives it, for internal/pods: the sandbox
// and container ids come back only in the responses, so a decoder has to
// pair them with what the requests said.

func (s *runtimeServer) RunPodSandbox(_ context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: ctrID("sandbox-" + req.GetConfig().GetMetadata().GetUid())}, nil
}

func (s *runtimeServer) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	return &runtimeapi.CreateContainerResponse{ContainerId: ctrID("container-" + req.GetPodSandboxId() + "/" + req.GetConfig().GetMetadata().GetName())}, nil
}

func (s *runtimeServer) StartContainer(context.Context, *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	return &runtimeapi.StartContainerResponse{}, nil
}

func (s *runtimeServer) StopPodSandbox(context.Context, *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (s *imageServer) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:" + ctrID("image-"+req.GetImage().GetImage())}, nil
}

// podMeta is the pod of the scenario.
var podMeta = &runtimeapi.PodSandboxMetadata{Name: "web-0", Uid: "0d6f3c2e-8a51-4c7b-9f0e-5b1e2a7c9d31", Namespace: "shop"}

// 9. A pod started as kubelet does it (PullImage with registry
// credentials, RunPodSandbox, CreateContainer, StartContainer), a second
// pod that existed before (seen only through ListPodSandbox and
// ListContainers answers), calls about both, and StopPodSandbox.
func podLifecycle(ctx context.Context, out string) error {
	h, rt, img, err := criClient(ctx, "pod_lifecycle", func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container {
		return []*runtimeapi.Container{{
			Id: ctrID("container-old"), PodSandboxId: ctrID("sandbox-old"),
			Metadata: &runtimeapi.ContainerMetadata{Name: "db"},
			State:    runtimeapi.ContainerState_CONTAINER_RUNNING,
			Labels: map[string]string{
				"io.kubernetes.pod.name": "db-0", "io.kubernetes.pod.namespace": "shop",
				"io.kubernetes.pod.uid": "7c4d1f0a-2b3e-4f5a-8c9d-0e1f2a3b4c5d", "io.kubernetes.container.name": "db",
			},
		}}
	})
	if err != nil {
		return err
	}
	sbConfig := &runtimeapi.PodSandboxConfig{Metadata: podMeta, Hostname: "web-0", LogDirectory: "/var/log/pods/shop_web-0_" + podMeta.Uid}
	if _, err := img.PullImage(ctx, &runtimeapi.PullImageRequest{
		Image:         &runtimeapi.ImageSpec{Image: "registry.example.com/shop/web:1.0"},
		Auth:          &runtimeapi.AuthConfig{Username: "robot", Password: "s3cr3t-registry-password"},
		SandboxConfig: sbConfig,
	}); err != nil {
		return err
	}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbConfig})
	if err != nil {
		return err
	}
	c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sb.GetPodSandboxId(),
		Config:        &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "nginx"}, Image: &runtimeapi.ImageSpec{Image: "registry.example.com/shop/web:1.0"}},
		SandboxConfig: sbConfig,
	})
	if err != nil {
		return err
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.GetContainerId()}); err != nil {
		return err
	}
	if _, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil {
		return err
	}
	if _, err := rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: ctrID("container-old")}); err != nil {
		return err
	}
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.GetPodSandboxId()}); err != nil {
		return err
	}
	return h.finish(out)
}
