// Command grpcpeer is the gRPC server and client that test/release runs in
// the arm64 guest next to the release binary: a real grpc-go call over a
// unix socket for the tracer to show.
//
//	grpcpeer serve SOCKET   serve grpc.health.v1 until killed; prints "ready"
//	grpcpeer call SOCKET    one Health/Check, prints its status
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: grpcpeer serve|call SOCKET")
		os.Exit(2)
	}
	sock := os.Args[2]
	switch os.Args[1] {
	case "serve":
		ln, err := net.Listen("unix", sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, health.NewServer())
		fmt.Println("ready")
		if err := s.Serve(ln); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "call":
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(resp.GetStatus())
	default:
		fmt.Fprintln(os.Stderr, "usage: grpcpeer serve|call SOCKET")
		os.Exit(2)
	}
}
