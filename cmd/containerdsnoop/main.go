// Command containerdsnoop shows, live, every gRPC call made to containerd
// over its unix socket, captured passively with eBPF.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

// version is stamped at release with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		// Errors can quote what a file or the wire held (a recording's
		// strings, a path): escaped for the terminal.
		fmt.Fprintln(os.Stderr, "containerdsnoop: "+termsafe.Escape(err.Error()))
		os.Exit(1)
	}
}

// exitError carries an exit status that needs no message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(args []string) error {
	root := &cobra.Command{
		Use:           "containerdsnoop",
		Short:         "Show every gRPC call made to containerd, captured with eBPF",
		Long:          "containerdsnoop shows, live, every gRPC call made over unix sockets (containerd, CRI):\nwho called, which method, the decoded request and response, the status and the latency.\nIt captures passively with eBPF: nothing is restarted, proxied or reconfigured.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(newTraceCommand(), newDecodeCommand(), newVersionCommand())
	return root.Execute()
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "containerdsnoop", version)
			return nil
		},
	}
}
