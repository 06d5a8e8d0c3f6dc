/* Kernel BTF lookups and BPF iterators for the C module: programs are assembled here
   from a few instructions, with structure offsets read from /sys/kernel/btf/vmlinux,
   so that no BPF compiler is needed. */
#ifndef NETWARDEN_BTF_H
#define NETWARDEN_BTF_H

#include <linux/bpf.h>
#include <stddef.h>
#include <stdint.h>

#define BTF_KIND_STRUCT 4
#define BTF_KIND_TYPEDEF 8
#define BTF_KIND_FUNC 12

typedef struct {
    unsigned char *data;
    size_t size;
    const char *strings;
    uint32_t strings_len;
    const struct btf_type_raw **types; /* by id; [0] unused */
    uint32_t count;
} btf_t;

/* 0 or an errno value; btf_free() in either case. */
int btf_load(btf_t *b);
void btf_free(btf_t *b);
/* The id of the type of this kind and name, or -1. */
int32_t btf_find(const btf_t *b, uint32_t kind, const char *name);
/* Byte offset of a member of struct `id` (looking into anonymous members), or -1. */
long btf_member_offset(const btf_t *b, int32_t id, const char *name);
/* Byte offset of a member of the struct named `type`, or -1. */
long btf_offset(const btf_t *b, const char *type, const char *member);
/* Offset in struct net of its namespace's inode number (what /proc/PID/ns/net names),
   or -1. */
long btf_netns_inum_offset(const btf_t *b);

/* A BPF map (name: at most 15 characters): its descriptor, or -1 with errno. */
int bpf_create_map(enum bpf_map_type type, uint32_t key, uint32_t value, uint32_t entries,
                   const char *name);
/* The bpf() system call. */
long bpf_call(int command, union bpf_attr *attr);
/* Loads a TRACING program attached (`attach`: BPF_TRACE_ITER, BPF_TRACE_RAW_TP) to the
   BTF type `target` of that kind (a function; a tracepoint's btf_trace_* typedef) and
   links it: 0 and *link, or an errno value. */
int bpf_tracing_link(const btf_t *b, uint32_t kind, const char *target,
                     enum bpf_attach_type attach, const struct bpf_insn *prog, size_t count,
                     const char *name, int *link);
/* Loads an iterator program for the kernel function `target` (e.g. bpf_iter_tcp) and
   links it: 0 and *link, or an errno value (the verifier's complaint goes nowhere). */
int bpf_iterator_link(const btf_t *b, const char *target, const struct bpf_insn *prog,
                      size_t count, const char *name, int *link);
/* Reads the kernel's BTF, has `build` load and link a program with it: 0 or an errno. */
int bpf_iterator_build(int (*build)(const btf_t *b, int *link), int *link);
/* One pass of a linked iterator, read whole: 0 with *data (malloc'ed) and *size. */
int bpf_iterator_read(int link, unsigned char **data, size_t *size);

#define INSN(c, d, s, o, i)                                                                \
    ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define LDX(size, d, s, o) INSN(BPF_LDX | BPF_MEM | (size), d, s, o, 0)
#define STX(size, d, s, o) INSN(BPF_STX | BPF_MEM | (size), d, s, o, 0)
#define MOV(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOVI(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define ALUI(op, d, i) INSN(BPF_ALU64 | (op) | BPF_K, d, 0, 0, i)
#define ALU(op, d, s) INSN(BPF_ALU64 | (op) | BPF_X, d, s, 0, 0)
#define JUMPI(op, d, i, o) INSN(BPF_JMP | (op) | BPF_K, d, 0, o, i)
#define LD_MAP_FD(d, fd)                                                                   \
    INSN(BPF_LD | BPF_DW | BPF_IMM, d, BPF_PSEUDO_MAP_FD, 0, fd), INSN(0, 0, 0, 0, 0)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/* An iterator program's output: the `size` bytes below the frame pointer, written to
   the seq_file of the context in r6 (ctx->meta->seq). Six instructions. */
#define SEQ_WRITE(size)                                                                    \
    LDX(BPF_DW, BPF_REG_1, BPF_REG_6, 0), LDX(BPF_DW, BPF_REG_1, BPF_REG_1, 0),            \
        MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -(size)),                     \
        MOVI(BPF_REG_3, (size)), CALL(BPF_FUNC_seq_write)

#endif
