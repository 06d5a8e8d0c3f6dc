/* Socket owners from a BPF task_file iterator (see _taskfiles.c). */
#ifndef NETWARDEN_TASKFILES_H
#define NETWARDEN_TASKFILES_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t inode, pid;
} owner_pair_t;

/* Every socket inode with the tgid of each process holding it: 0, or an errno value.
   *pairs is malloc'ed. Runs without the GIL. */
int taskfiles_read(owner_pair_t **pairs, size_t *count);

#endif
