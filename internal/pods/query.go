package pods

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxAnswer bounds a List answer: a node's few hundred pods fit many times
// over, and a hostile socket cannot make the tracer allocate more.
const maxAnswer = 16 << 20

// Query asks the CRI runtime on socket, read-only, for its sandboxes and
// containers (one ListPodSandbox, one ListContainers), so that calls
// about pods created before the tracer started are named at once rather
// than after kubelet's next List. The tracer's own calls are not traced.
func Query(ctx context.Context, socket string) (*runtimeapi.ListPodSandboxResponse, *runtimeapi.ListContainersResponse, error) {
	cc, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxAnswer)))
	if err != nil {
		return nil, nil, err
	}
	defer cc.Close()
	rt := runtimeapi.NewRuntimeServiceClient(cc)
	sb, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, nil, fmt.Errorf("ListPodSandbox on %s: %w", socket, err)
	}
	cs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return sb, nil, fmt.Errorf("ListContainers on %s: %w", socket, err)
	}
	return sb, cs, nil
}
