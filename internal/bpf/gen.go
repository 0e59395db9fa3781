package bpf

// The generated snoop_{x86,arm64}_bpfel.{go,o} are committed so that building
// needs no clang; `make generate` rebuilds them after a change to bpf/. Each
// target is compiled against its own bpf/vmlinux_<arch>.h (picked by
// __TARGET_ARCH_*, see bpf/vmlinux.h). The compiler is $BPF2GO_CC (default
// clang), which make generate sets after checking it is the clang the
// committed objects are built with (Makefile, BPF_CLANG_MAJOR).
//go:generate go tool bpf2go -cflags "-O2 -g -Wall -Werror" -target amd64,arm64 -type event -type stats -type event_flag -type backend_id -type hpack_field -type hpack_flag -type sock_path_key snoop ../../bpf/snoop.bpf.c -- -I../../bpf
