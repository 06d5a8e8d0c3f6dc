/* Kernel BTF lookups and BPF iterator plumbing (see _btf.h). */
#include "_btf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BTF_PATH "/sys/kernel/btf/vmlinux"
#define BTF_KIND_INT 1
#define BTF_KIND_ARRAY 3
#define BTF_KIND_UNION 5
#define BTF_KIND_ENUM 6
#define BTF_KIND_FUNC_PROTO 13
#define BTF_KIND_VAR 14
#define BTF_KIND_DATASEC 15
#define BTF_KIND_DECL_TAG 17
#define BTF_KIND_ENUM64 19

struct btf_header_raw {
    uint16_t magic;
    uint8_t version, flags;
    uint32_t hdr_len, type_off, type_len, str_off, str_len;
};

struct btf_type_raw {
    uint32_t name_off, info, size_or_type;
};

struct btf_member_raw {
    uint32_t name_off, type, offset;
};


static size_t extra_size(const struct btf_type_raw *t) {
    uint32_t kind = (t->info >> 24) & 0x1f, vlen = t->info & 0xffff;
    switch (kind) {
    case BTF_KIND_INT:
    case BTF_KIND_VAR:
    case BTF_KIND_DECL_TAG:
        return 4;
    case BTF_KIND_ARRAY:
        return 12;
    case BTF_KIND_STRUCT:
    case BTF_KIND_UNION:
    case BTF_KIND_DATASEC:
    case BTF_KIND_ENUM64:
        return (size_t)vlen * 12;
    case BTF_KIND_ENUM:
    case BTF_KIND_FUNC_PROTO:
        return (size_t)vlen * 8;
    default:
        return 0;
    }
}

void btf_free(btf_t *b) {
    free(b->data);
    free(b->types);
}

int btf_load(btf_t *b) {
    memset(b, 0, sizeof *b);
    int fd = open(BTF_PATH, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    size_t cap = 8 << 20;
    b->data = malloc(cap);
    for (;;) {
        if (b->data == NULL) {
            close(fd);
            return ENOMEM;
        }
        ssize_t n = read(fd, b->data + b->size, cap - b->size);
        if (n < 0) {
            close(fd);
            return errno;
        }
        if (n == 0)
            break;
        b->size += (size_t)n;
        if (b->size == cap) {
            cap *= 2;
            unsigned char *grown = realloc(b->data, cap);
            if (grown == NULL)
                free(b->data);
            b->data = grown;
        }
    }
    close(fd);
    const struct btf_header_raw *h = (const void *)b->data;
    if (b->size < sizeof *h || h->magic != 0xeB9F ||
        (size_t)h->hdr_len + h->str_off + h->str_len > b->size ||
        (size_t)h->hdr_len + h->type_off + h->type_len > b->size)
        return EINVAL;
    b->strings = (const char *)b->data + h->hdr_len + h->str_off;
    b->strings_len = h->str_len;
    const unsigned char *p = b->data + h->hdr_len + h->type_off,
                        *end = p + h->type_len;
    size_t cap_types = 1 << 17;
    b->types = malloc(cap_types * sizeof *b->types);
    b->count = 1;
    while (b->types != NULL && p + sizeof(struct btf_type_raw) <= end) {
        const struct btf_type_raw *t = (const void *)p;
        if (p + sizeof *t + extra_size(t) > end)
            break; /* a truncated last type: not one we could use */
        if (b->count == cap_types) {
            cap_types *= 2;
            const struct btf_type_raw **grown = realloc(b->types, cap_types * sizeof *grown);
            if (grown == NULL)
                free(b->types);
            b->types = grown;
            if (grown == NULL)
                break;
        }
        b->types[b->count++] = t;
        p += sizeof *t + extra_size(t);
    }
    return b->types == NULL ? ENOMEM : 0;
}

static const char *btf_name(const btf_t *b, uint32_t offset) {
    return offset < b->strings_len ? b->strings + offset : "";
}

int32_t btf_find(const btf_t *b, uint32_t kind, const char *name) {
    for (uint32_t id = 1; id < b->count; id++) {
        const struct btf_type_raw *t = b->types[id];
        if (((t->info >> 24) & 0x1f) == kind && strcmp(btf_name(b, t->name_off), name) == 0)
            return (int32_t)id;
    }
    return -1;
}

static long member_offset(const btf_t *b, uint32_t id, const char *name, int depth) {
    if (id == 0 || id >= b->count || depth > 4)
        return -1;
    const struct btf_type_raw *t = b->types[id];
    uint32_t kind = (t->info >> 24) & 0x1f, vlen = t->info & 0xffff, kflag = t->info >> 31;
    if (kind != BTF_KIND_STRUCT && kind != BTF_KIND_UNION)
        return -1;
    const struct btf_member_raw *m = (const void *)(t + 1);
    for (uint32_t i = 0; i < vlen; i++) {
        uint32_t bits = kflag ? m[i].offset & 0xffffff : m[i].offset;
        if (bits % 8)
            continue;
        if (m[i].name_off == 0) {
            long inner = member_offset(b, m[i].type, name, depth + 1);
            if (inner >= 0)
                return bits / 8 + inner;
        } else if (strcmp(btf_name(b, m[i].name_off), name) == 0) {
            return bits / 8;
        }
    }
    return -1;
}

long bpf_call(int command, union bpf_attr *attr) {
    return syscall(__NR_bpf, command, attr, sizeof *attr);
}

long btf_member_offset(const btf_t *b, int32_t id, const char *name) {
    return id < 0 ? -1 : member_offset(b, (uint32_t)id, name, 0);
}

int bpf_create_map(enum bpf_map_type type, uint32_t key, uint32_t value, uint32_t entries,
                   const char *name) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = type;
    attr.key_size = key;
    attr.value_size = value;
    attr.max_entries = entries;
    strncpy(attr.map_name, name, sizeof attr.map_name - 1);
    return (int)bpf_call(BPF_MAP_CREATE, &attr);
}

long btf_offset(const btf_t *b, const char *type, const char *member) {
    return btf_member_offset(b, btf_find(b, BTF_KIND_STRUCT, type), member);
}

long btf_netns_inum_offset(const btf_t *b) {
    long ns = btf_offset(b, "net", "ns"), inum = btf_offset(b, "ns_common", "inum");
    return ns < 0 || inum < 0 ? -1 : ns + inum;
}

int bpf_tracing_link(const btf_t *b, uint32_t kind, const char *target,
                     enum bpf_attach_type attach, const struct bpf_insn *prog, size_t count,
                     const char *name, int *link) {
    int32_t func = btf_find(b, kind, target);
    if (func < 0)
        return ENOENT;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_TRACING;
    attr.expected_attach_type = attach;
    attr.attach_btf_id = (uint32_t)func;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.insn_cnt = (uint32_t)count;
    attr.license = (uint64_t)(uintptr_t) "GPL";
    strncpy(attr.prog_name, name, sizeof attr.prog_name - 1);
    int prog_fd = (int)bpf_call(BPF_PROG_LOAD, &attr);
    if (prog_fd < 0)
        return errno;
    memset(&attr, 0, sizeof attr);
    attr.link_create.prog_fd = (uint32_t)prog_fd;
    attr.link_create.attach_type = attach;
    int fd = (int)bpf_call(BPF_LINK_CREATE, &attr);
    int error = errno;
    close(prog_fd);
    if (fd < 0)
        return error;
    *link = fd;
    return 0;
}

int bpf_iterator_link(const btf_t *b, const char *target, const struct bpf_insn *prog,
                      size_t count, const char *name, int *link) {
    return bpf_tracing_link(b, BTF_KIND_FUNC, target, BPF_TRACE_ITER, prog, count, name, link);
}

int bpf_iterator_build(int (*build)(const btf_t *b, int *link), int *link) {
    btf_t b;
    int error = btf_load(&b);
    if (error == 0)
        error = build(&b, link);
    btf_free(&b);
    return error;
}

int bpf_iterator_read(int link, unsigned char **data, size_t *size) {
    *data = NULL;
    *size = 0;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.iter_create.link_fd = (uint32_t)link;
    int fd = (int)bpf_call(BPF_ITER_CREATE, &attr);
    if (fd < 0)
        return errno;
    size_t cap = 1 << 20, used = 0;
    unsigned char *buffer = malloc(cap);
    int error = 0;
    while (buffer != NULL) {
        if (used == cap) {
            unsigned char *grown = realloc(buffer, cap * 2);
            if (grown == NULL) {
                free(buffer);
                buffer = NULL;
                break;
            }
            buffer = grown;
            cap *= 2;
        }
        ssize_t n = read(fd, buffer + used, cap - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            error = errno;
            break;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    if (buffer == NULL)
        return ENOMEM;
    if (error != 0) {
        free(buffer);
        return error;
    }
    *data = buffer;
    *size = used;
    return 0;
}
