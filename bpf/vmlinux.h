/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Kernel types for the architecture being compiled for. bpf2go defines
 * __TARGET_ARCH_<arch> for each -target; the headers differ in the register
 * layout BPF_KPROBE reads (struct pt_regs on x86, struct user_pt_regs on
 * arm64), while field accesses are relocated by CO-RE on any kernel.
 * scripts/gen-vmlinux.sh regenerates vmlinux_<arch>.h.
 */
#ifndef __CONTAINERDSNOOP_VMLINUX_H__
#define __CONTAINERDSNOOP_VMLINUX_H__

#if defined(__TARGET_ARCH_x86)
#include "vmlinux_x86.h"
#elif defined(__TARGET_ARCH_arm64)
#include "vmlinux_arm64.h"
#else
#error "no vmlinux header for this target: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64 (bpf2go -target amd64,arm64 does)"
#endif

#endif /* __CONTAINERDSNOOP_VMLINUX_H__ */
