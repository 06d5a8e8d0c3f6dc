/* A BPF program assembled instruction by instruction, with forward jumps to labels
   patched when it is done (shared by the parts that load tracepoint programs). */
#ifndef NETWARDEN_BPFPROG_H
#define NETWARDEN_BPFPROG_H

#include "_btf.h"

#include <errno.h>
#include <string.h>

#define PROG_MAX_INSNS 96
#define PROG_MAX_LABELS 8

typedef struct {
    struct bpf_insn insn[PROG_MAX_INSNS];
    size_t n, label_at[PROG_MAX_LABELS], jumps[PROG_MAX_INSNS];
    int jump_to[PROG_MAX_INSNS];
    size_t njumps;
} program_t;

static inline void op(program_t *p, struct bpf_insn insn) {
    if (p->n < PROG_MAX_INSNS)
        p->insn[p->n] = insn;
    p->n++;
}

static inline void jump(program_t *p, struct bpf_insn insn, int label) {
    if (p->njumps < PROG_MAX_INSNS) {
        p->jumps[p->njumps] = p->n;
        p->jump_to[p->njumps++] = label;
    }
    op(p, insn);
}

static inline void label(program_t *p, int which) { p->label_at[which] = p->n; }

/* 0, or E2BIG for a program that did not fit. */
static inline int patch(program_t *p) {
    if (p->n > PROG_MAX_INSNS)
        return E2BIG;
    for (size_t i = 0; i < p->njumps; i++)
        p->insn[p->jumps[i]].off = (short)(p->label_at[p->jump_to[i]] - p->jumps[i] - 1);
    return 0;
}

/* r0 = map[key at fp+key]: the value, or NULL. */
static inline void map_lookup(program_t *p, int map, int key) {
    const struct bpf_insn lookup[] = {LD_MAP_FD(BPF_REG_1, map), MOV(BPF_REG_2, BPF_REG_10),
                                      ALUI(BPF_ADD, BPF_REG_2, key),
                                      CALL(BPF_FUNC_map_lookup_elem)};
    for (size_t i = 0; i < sizeof lookup / sizeof lookup[0]; i++)
        op(p, lookup[i]);
}

/* The calling process's pid (its tgid) at fp+at and uid at fp+at+4, 32 bits each. */
static inline void current_pid_uid(program_t *p, short at) {
    op(p, CALL(BPF_FUNC_get_current_pid_tgid));
    op(p, ALUI(BPF_RSH, BPF_REG_0, 32));
    op(p, STX(BPF_W, BPF_REG_10, BPF_REG_0, at));
    op(p, CALL(BPF_FUNC_get_current_uid_gid));
    op(p, STX(BPF_W, BPF_REG_10, BPF_REG_0, (short)(at + 4)));
}

/* The program's end: label `out` (where its jumps out land) returns 0. 0, or E2BIG. */
static inline int finish_at(program_t *p, int out) {
    label(p, out);
    op(p, MOVI(BPF_REG_0, 0));
    op(p, EXIT());
    return patch(p);
}

/* r7: the tracepoint's socket (its first argument; ctx in r6), unless NULL or of another
   namespace than netns (0: any), which jump to `out`. `net` and `ns_inum`: the offsets
   of sock_common's skc_net and of the namespace's inode number in struct net. */
static inline void socket_in_namespace(program_t *p, long net, long ns_inum, uint32_t netns,
                                       int out) {
    op(p, LDX(BPF_DW, BPF_REG_7, BPF_REG_6, 0));
    jump(p, JUMPI(BPF_JEQ, BPF_REG_7, 0, 0), out);
    if (netns != 0) {
        op(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_7, (short)net));
        op(p, LDX(BPF_W, BPF_REG_2, BPF_REG_2, (short)ns_inum));
        jump(p, INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_2, 0, 0, (int32_t)netns), out);
    }
}

/* map[key at fp+key] = value at fp+value (flags: BPF_ANY, BPF_NOEXIST). */
static inline void map_update(program_t *p, int map, int key, int value, int flags) {
    const struct bpf_insn update[] = {
        LD_MAP_FD(BPF_REG_1, map), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, key),
        MOV(BPF_REG_3, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_3, value), MOVI(BPF_REG_4, flags),
        CALL(BPF_FUNC_map_update_elem)};
    for (size_t i = 0; i < sizeof update / sizeof update[0]; i++)
        op(p, update[i]);
}

/* The bpf() map commands on one key: 0, or -1 with errno. */
static inline int map_call(int command, int map, const void *key, void *value) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)key;
    attr.value = (uint64_t)(uintptr_t)value;
    return bpf_call(command, &attr) < 0 ? -1 : 0;
}

#endif
