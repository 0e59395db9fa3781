package bpf

// The generated snoop_bpfel.{go,o} are committed so that building needs no
// clang; `make generate` rebuilds them after a change to bpf/.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64 -type event -type stats -type event_flag -type backend_id snoop ../../bpf/snoop.bpf.c -- -I../../bpf
