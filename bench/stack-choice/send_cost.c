/* Kernel cost of one small loopback send() to each of 2,000 TCP sockets (see README.md).
   cc -O2 -o send_cost send_cost.c && ./send_cost [congestion-control] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  char buf[700]; memset(buf,'x',sizeof buf); int N=2000, R=50;
  int ls=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={0}; a.sin_family=AF_INET; a.sin_addr.s_addr=htonl(0x7f000001);
  bind(ls,(void*)&a,sizeof a); listen(ls,4096); socklen_t l=sizeof a; getsockname(ls,(void*)&a,&l);
  int cs[N], ss[N];
  for(int i=0;i<N;i++){cs[i]=socket(AF_INET,SOCK_STREAM,0); connect(cs[i],(void*)&a,sizeof a); ss[i]=accept(ls,0,0);
    int one=1; setsockopt(ss[i],IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);
    if(argc>1) if(setsockopt(ss[i],IPPROTO_TCP,TCP_CONGESTION,argv[1],strlen(argv[1]))) {perror("cc");return 1;}}
  if(fork()==0){ /* reader: drain all client sockets; dies with its parent */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char b[65536]; for(;;){ for(int i=0;i<N;i++){ recv(cs[i],b,sizeof b,MSG_DONTWAIT);} usleep(1000);} }
  double t0=now(); for(int r=0;r<R;r++){ for(int i=0;i<N;i++) send(ss[i],buf,650,0); usleep(20000);} 
  double el=now()-t0-R*0.02;
  printf("%s: %.2f us per send over %d sockets\n", argc>1?argv[1]:"default", el/(N*R)*1e6, N);
  return 0;
}
