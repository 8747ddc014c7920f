// SPDX-License-Identifier: Apache-2.0
//
// The lab's pod sandbox ("pause") process: PID 1 of every lab pod. It holds the pod's
// namespaces open, reaps orphaned children (it is the pod's init when PID namespaces are
// shared) and exits at once on SIGTERM/SIGINT so that StopPodSandbox never waits out a
// grace period. Built with `gcc -static -Os -s` by startprof lab up; no libc beyond that.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction stop = { .sa_handler = on_stop };
	struct sigaction child = { .sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART };

	// PID 1 gets no default signal dispositions from the kernel: without handlers SIGTERM
	// would be ignored and the runtime would have to SIGKILL us after its timeout.
	sigaction(SIGTERM, &stop, NULL);
	sigaction(SIGINT, &stop, NULL);
	sigaction(SIGCHLD, &child, NULL);
	for (;;)
		pause();
	return 0;
}
