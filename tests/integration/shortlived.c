/* Connects, sends exactly BYTES, exits: a process that lives a few milliseconds (a
   Python one takes longer than that to start). Prints its pid and local port.
   usage: shortlived HOST PORT BYTES */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) return 1;
    static char block[65536];
    long left = atol(argv[3]);
    while (left > 0) {
        ssize_t n = send(fd, block, left < (long)sizeof block ? (size_t)left : sizeof block, 0);
        if (n <= 0) return 1;
        left -= n;
    }
    struct sockaddr_in me; socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    printf("%d %d\n", (int)getpid(), ntohs(me.sin_port));
    close(fd);
    return 0;
}
