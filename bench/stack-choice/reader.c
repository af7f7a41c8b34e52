/* N idle WebSocket clients for stack_choice.py: connect, handshake, then read and discard.
   cc -O2 -o reader reader.c && ./reader PORT N */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: reader PORT N\n"); return 2; }
  int port = atoi(argv[1]), n = atoi(argv[2]);
  int ep = epoll_create1(0);
  const char *req = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
  for (int i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (void*)&a, sizeof a)) { perror("connect"); return 1; }
    write(fd, req, strlen(req));
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  printf("connected\n"); fflush(stdout);
  static char buf[65536]; struct epoll_event evs[512]; long long total = 0;
  for (;;) {
    int k = epoll_wait(ep, evs, 512, 1000);
    for (int i = 0; i < k; i++) { ssize_t r = read(evs[i].data.fd, buf, sizeof buf); if (r > 0) total += r; }
  }
}
