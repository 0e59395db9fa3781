package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type runtimeServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	resp *runtimeapi.ListContainersResponse
}

func (s *runtimeServer) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return s.resp, nil
}

func (s *runtimeServer) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "snoopbench", RuntimeVersion: "1.0", RuntimeApiVersion: "v1"}, nil
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path to listen on (required)")
	respSize := fs.Int("resp-size", 1024, "approximate ListContainers response size in bytes (whole containers are added until it is reached)")
	fs.Parse(args)
	if *socket == "" {
		return errors.New("server: -socket is required")
	}
	os.Remove(*socket)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	defer os.Remove(*socket)
	resp := listResponse(*respSize)
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, &runtimeServer{resp: resp})

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.Stop()
	}()
	// scripts/bench.sh waits for this line.
	fmt.Printf("snoopbench: server ready pid=%d socket=%s resp_bytes=%d containers=%d\n",
		os.Getpid(), *socket, proto.Size(resp), len(resp.Containers))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
