/* Every TCP socket of one network namespace from a BPF tcp iterator (see _tcptrack.c). */
#ifndef NETWARDEN_TCPTRACK_H
#define NETWARDEN_TCPTRACK_H

#include <stddef.h>
#include <stdint.h>

/* One socket as the iterator program writes it (104 bytes, little-endian words). */
typedef struct {
    uint64_t cookie, acked, received, sent, inode, cgroup;
    uint32_t uid;
    uint16_t family;
    uint8_t state, unused;
    uint16_t port;        /* local, host order */
    uint16_t remote_port; /* network order */
    uint32_t v4_local, v4_remote, unused2;
    uint8_t v6_local[16], v6_remote[16];
} tcp_socket_t;

typedef struct {
    int link;  /* the linked iterator program */
    int netns; /* the namespace whose sockets it reads */
} tcptrack_t;

/* Loads the program for the namespace of netns_fd (a duplicate is kept), or the calling
   thread's when it is -1: 0 or an errno value. */
int tcptrack_open(tcptrack_t *t, int netns_fd);
void tcptrack_close(tcptrack_t *t);
/* Every full TCP socket (no time-wait or request mini-sockets): 0 with *sockets
   (malloc'ed) and *count, or an errno value. Runs without the GIL. */
int tcptrack_read(const tcptrack_t *t, tcp_socket_t **sockets, size_t *count);

#endif
