/* The sandbox ("pause") container of vpc-cni's simulated Kubernetes nodes:
 * it holds the pod's namespaces, reaps orphans, and exits on SIGINT/SIGTERM.
 * Built static by scripts/k8s-bins.sh into a one-file image. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	struct sigaction term = {.sa_handler = stop};
	struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v') {
		puts("vpc-cni pause 1");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: not pid 1, orphans will not be reaped here\n");
	if (sigaction(SIGINT, &term, NULL) || sigaction(SIGTERM, &term, NULL) ||
	    sigaction(SIGCHLD, &chld, NULL)) {
		perror("sigaction");
		return 1;
	}
	for (;;)
		pause();
}
