/* The native floor for benchmarks/monitor_snapshot --native-floor: every TCP socket with
   its pid and bytes as JSON lines, the way a compiled helper would do it (one sock_diag
   dump with tcp_info, one scan of /proc/PID/fd; NOSCAN=1 skips the scan, as with warm caches).
   Not part of netwarden: a measurement for deciding whether a native helper is worth it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <linux/tcp.h>

#define HSIZE (1 << 20)
static unsigned long keys[HSIZE]; static int vals[HSIZE];
static void put(unsigned long k, int v) { unsigned long h = (k * 2654435761UL) & (HSIZE - 1);
  while (keys[h] && keys[h] != k) h = (h + 1) & (HSIZE - 1); keys[h] = k; vals[h] = v; }
static int get(unsigned long k) { unsigned long h = (k * 2654435761UL) & (HSIZE - 1);
  while (keys[h]) { if (keys[h] == k) return vals[h]; h = (h + 1) & (HSIZE - 1); } return 0; }

static void scan_proc(void) {
  DIR *proc = opendir("/proc"); struct dirent *p; char path[64], link[64];
  while ((p = readdir(proc))) {
    if (p->d_name[0] < '0' || p->d_name[0] > '9') continue;
    int pid = atoi(p->d_name);
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    int dfd = open(path, O_RDONLY | O_DIRECTORY); if (dfd < 0) continue;
    DIR *fds = fdopendir(dfd); struct dirent *f;
    while ((f = readdir(fds))) {
      if (f->d_name[0] == '.') continue;
      ssize_t n = readlinkat(dfd, f->d_name, link, sizeof link - 1);
      if (n > 9 && !memcmp(link, "socket:[", 8)) { link[n] = 0; put(strtoul(link + 8, 0, 10), pid); }
    }
    closedir(fds);
  }
  closedir(proc);
}

static char out[1 << 16]; static size_t used;
static void flush(void) { fwrite(out, 1, used, stdout); used = 0; }

static void dump(int family) {
  int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  struct { struct nlmsghdr h; struct inet_diag_req_v2 r; } req = {0};
  req.h.nlmsg_len = sizeof req; req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP; req.r.sdiag_family = family;
  req.r.sdiag_protocol = IPPROTO_TCP; req.r.idiag_states = ~(1 << 6);
  req.r.idiag_ext = 1 << (INET_DIAG_INFO - 1);
  send(s, &req, sizeof req, 0);
  static char buf[1 << 20];
  for (;;) {
    ssize_t n = recv(s, buf, sizeof buf, 0); if (n <= 0) break;
    for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) { close(s); return; }
      struct inet_diag_msg *m = NLMSG_DATA(h);
      unsigned long long acked = 0, recvd = 0; int have = 0;
      int len = h->nlmsg_len - NLMSG_LENGTH(sizeof *m);
      for (struct rtattr *a = (void *)(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == INET_DIAG_INFO) { struct tcp_info *t = RTA_DATA(a);
          acked = t->tcpi_bytes_acked; recvd = t->tcpi_bytes_received; have = 1; }
      if (!have) continue;
      char l[INET6_ADDRSTRLEN], r[INET6_ADDRSTRLEN];
      inet_ntop(family, m->id.idiag_src, l, sizeof l); inet_ntop(family, m->id.idiag_dst, r, sizeof r);
      if (used > sizeof out - 512) flush();
      used += sprintf(out + used, "{\"local\":\"%s:%u\",\"remote\":\"%s:%u\",\"pid\":%d,\"sent\":%llu,\"received\":%llu}\n",
                      l, ntohs(m->id.idiag_sport), r, ntohs(m->id.idiag_dport), get(m->idiag_inode), acked, recvd);
    }
  }
  close(s);
}

int main(void) { if (!getenv("NOSCAN")) scan_proc(); dump(AF_INET); dump(AF_INET6); flush(); return 0; }
