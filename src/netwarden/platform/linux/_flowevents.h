/* Flow events with the process behind them, from BPF programs on the kernel's socket
   send, receive and state tracepoints, read from a ring buffer (see _flowevents.c). */
#ifndef NETWARDEN_FLOWEVENTS_H
#define NETWARDEN_FLOWEVENTS_H

#include <stddef.h>
#include <stdint.h>

/* One event as the programs write it (80 bytes). */
typedef struct {
    uint64_t pid_tgid;
    uint16_t family;
    uint8_t protocol, unused;
    uint16_t port;        /* local, host order */
    uint16_t remote_port; /* network order; 0 for an unconnected UDP socket */
    uint32_t v4_local, v4_remote;
    uint8_t v6_local[16], v6_remote[16];
    char comm[16];
    uint64_t uid_gid;
} flow_event_t;

#define FLOW_HOOKS 3

typedef struct {
    int ring;              /* the ring buffer map */
    int seen;              /* conversations reported lately (an LRU hash) */
    int known;             /* pids the monitor read lately, with when (an LRU hash) */
    int connecting;        /* sockets in SYN-SENT, with their process (an LRU hash) */
    int links[FLOW_HOOKS]; /* the attached programs, -1 when not */
    size_t size;           /* of the ring's data area */
    unsigned long *consumer;
    const unsigned long *producer;
    const unsigned char *data;
} flowevents_t;

/* Loads and attaches the programs; events of sockets in the network namespace whose
   inode is netns (0: every namespace). 0, or an errno value (nothing left open). */
int flowevents_open(flowevents_t *f, uint32_t netns);
void flowevents_close(flowevents_t *f);
/* Tells the programs that pid was just read: its events wake the reader no more for a
   second. 0 or an errno value. */
int flowevents_know(flowevents_t *f, uint32_t pid);
/* Copies out up to max waiting events: how many. */
size_t flowevents_read(flowevents_t *f, flow_event_t *out, size_t max);

#endif
